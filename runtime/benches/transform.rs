//! Wasm vs native, end to end of the transform stage: the thermostat plugin on 300-byte
//! payloads at batch sizes 1, 10, 64 and 100.
//!
//! - native: the plugin's Rust code called directly, its records packed as the SDK packs
//!   them (MessagePack) and validated + encoded to Avro by the same code the host uses;
//! - wasm: `Configured::process` on the built component (a reused, initialised instance; copy in
//!   and out, validation + Avro encoding).
//!
//! The two are measured interleaved, round after round, in one process, and the median of
//! each is reported with their ratio, so machine drift affects both alike.
//! Run: `cargo xtask plugins && cargo bench -p weir --bench transform`; `WEIR_BENCH_BATCHES`
//! (e.g. `1,64`) measures only those batch sizes; `WEIR_BENCH_ONLY=wasm` (or `native`) runs
//! only that side, for a profile of it (the ratio is then not printed).

use std::hint::black_box;
use std::time::{Duration, Instant};
use thermostat::Thermostat;
use weir::transform::{Host, Limits, Message, Outcome};
use weir_core::avro::AvroSchema;
use weir_sdk::{Config, Emit, Plugin};

const ROUNDS: usize = 15;
const ROUND_TIME: Duration = Duration::from_millis(150);

fn payload(i: usize) -> String {
    let p = format!(
        r#"{{"device":"t-{i:04}","ts":{},"temperature":{{"value":{:.1},"unit":"F"}},"setpoint":{{"value":68.0,"unit":"F"}},"humidity":{{"value":41.5,"unit":"%"}},"fw":"3.1.0","site":"plant-7","line":"line-2","model":"TX-300","rssi":-61,"uptime_s":123456,"battery":{{"value":3.61,"unit":"V"}}}}"#,
        1_700_000_000_000u64 + i as u64,
        60.0 + (i % 20) as f64
    );
    format!("{p:<300}")
}

/// ns per message of `f` over `n` messages per call, measured for about `ROUND_TIME`.
fn measure(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < ROUND_TIME {
        f();
        calls += 1;
    }
    start.elapsed().as_nanos() as f64 / (calls as f64 * n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let wasm = root.join("target/plugins/thermostat-1.0.0.wasm");
    let host = Host::new(Limits::default(), None).expect("engine");
    let plugin = host
        .load_file(&wasm)
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask plugins` first)"));
    let configured = plugin.configure(vec![], "bench").unwrap();
    let schema = AvroSchema::parse(thermostat::SCHEMA).unwrap();
    let native: Thermostat = Thermostat::init(&Config::default()).unwrap();

    println!("thermostat transform, 300-byte payloads, median of {ROUNDS} interleaved rounds");
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>14}",
        "batch", "native ns/msg", "wasm ns/msg", "wasm/native", "overhead ns/msg"
    );
    let sizes: Vec<usize> = match std::env::var("WEIR_BENCH_BATCHES") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("WEIR_BENCH_BATCHES: {s:?} is not a batch size"))
            })
            .collect(),
        Err(_) => vec![1, 10, 64, 100],
    };
    let only = std::env::var("WEIR_BENCH_ONLY").ok();
    let runs = |side: &str| only.as_deref().is_none_or(|o| o == side);
    if let Some(o) = &only {
        assert!(
            matches!(o.as_str(), "wasm" | "native"),
            "WEIR_BENCH_ONLY: {o:?} is neither wasm nor native"
        );
    }
    for size in sizes {
        let mut batch: Vec<Message> = (0..size)
            .map(|i| Message {
                topic: format!("plant/7/thermostat/t-{i:04}"),
                payload: payload(i).into_bytes(),
                properties: vec![],
                content_type: None,
                received_at_ms: 0,
            })
            .collect();
        let sdk_batch: Vec<weir_sdk::Message> = batch
            .iter()
            .map(|m| weir_sdk::Message::new(m.topic.clone(), m.payload.clone()))
            .collect();
        let mut run_native = || {
            let mut out = Vec::with_capacity(size);
            for m in &sdk_batch {
                let Ok(Emit::Records(records)) = native.transform(m) else {
                    panic!("native failed")
                };
                let mut encoded = Vec::with_capacity(records.len());
                for r in records {
                    let packed = weir_sdk::glue::pack(&r.value).unwrap();
                    let mut avro = Vec::with_capacity(packed.len());
                    schema
                        .encode_packed(&packed, usize::MAX, &mut avro)
                        .unwrap();
                    encoded.push(avro);
                }
                out.push(encoded);
            }
            black_box(out);
        };
        let mut run_wasm = || {
            let out = configured.process(black_box(&mut batch));
            assert!(matches!(out[0], Outcome::Emit(_)));
            black_box(out);
        };
        let (mut n, mut w) = (Vec::new(), Vec::new());
        // A warm-up round first, not counted.
        for round in 0..=ROUNDS {
            if runs("native") {
                n.push(measure(size, &mut run_native));
            }
            if runs("wasm") {
                w.push(measure(size, &mut run_wasm));
            }
            if round == 0 {
                n.clear();
                w.clear();
            }
        }
        if only.is_some() {
            let (side, times) = if runs("wasm") {
                ("wasm", w)
            } else {
                ("native", n)
            };
            println!("{size:>6} {side} only: {:.0} ns/msg", median(times));
            continue;
        }
        let (n, w) = (median(n), median(w));
        println!(
            "{size:>6} {n:>12.0} {w:>12.0} {:>10.2} {:>14.0}",
            w / n,
            w - n
        );
    }
}
