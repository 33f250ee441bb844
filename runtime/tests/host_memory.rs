//! Host memory stays bounded over thousands of misbehaving calls. Alone in its own test
//! binary: RSS is per process, and other tests running in parallel would blur it.

mod common;

use common::{adversarial, kind, message, rss_bytes};

#[test]
fn host_memory_stays_bounded_over_thousands_of_bad_calls() {
    let (_plugin, p) = adversarial(16);
    let cycle = ["panic", "badschema", "recurse", "reject", "ok", "huge"];
    let run = |calls: usize| {
        for i in 0..calls {
            let payload = if i % 250 == 0 {
                "bomb"
            } else {
                cycle[i % cycle.len()]
            };
            let out = p.process(&mut [message("t", payload.as_bytes()), message("t", b"fine")]);
            assert_eq!(kind(&out[1]), "emit:1", "healthy neighbour of {payload}");
        }
    };
    run(300);
    let before = rss_bytes();
    run(3000);
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 48 << 20,
        "RSS grew by {} MiB over 3000 calls",
        growth >> 20
    );
}
