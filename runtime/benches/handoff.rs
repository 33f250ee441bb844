//! The hand-off of writes to librdkafka, counted: `Sink::send` of N records shaped like the
//! drain's (a 150-byte value, a key, six headers in two shared lists) to the test bed's
//! Kafka, then every answer awaited. The regression guard (`instructions.rs`) cannot see
//! this part: its sink answers at once, with no librdkafka. Run by `scripts/bench-handoff`,
//! which counts the writing thread's instructions with callgrind at two sizes and reports
//! the difference per write.
//!
//! Needs `WEIR_KAFKA_BOOTSTRAP` (the test bed's Kafka). Usage: `handoff <records>`.

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::sync::Arc;
use weir::sink::{Answer, Sink};
use weir_core::write::{HeaderList, Headers, Write};

/// The topic written (one partition, created if missing).
const TOPIC: &str = "weir-bench-handoff";

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: handoff <records>");
    let bootstrap = std::env::var("WEIR_KAFKA_BOOTSTRAP")
        .expect("WEIR_KAFKA_BOOTSTRAP must name the test bed's Kafka (scripts/testbed up)");
    bed::create_topics(&bootstrap, &[TOPIC]);
    let cfg = weir::config::Kafka {
        bootstrap,
        properties: Default::default(),
        tls: None,
        sasl: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let sink = Sink::new(&cfg, "handoff").expect("a producer");
        let topic: Arc<str> = Arc::from(TOPIC);
        let mut identity = HeaderList::default();
        identity.push("weir.plugin", b"thermostat@1.0.0");
        identity.push("weir.plugin.sha256", &[b'a'; 64]);
        identity.push("weir.cohort", b"thermostats");
        let identity = Arc::new(identity);
        let writes: Vec<Write> = (0..n)
            .map(|i| {
                let mut own = HeaderList::with_capacity(80);
                own.push(
                    "weir.message.id",
                    format!("0123456789abcdef-{i:x}").as_bytes(),
                );
                own.push("weir.mqtt.topic", b"plant/7/line/2/thermostat/t-100");
                own.push("weir.received_at", b"1700000000000");
                Write {
                    topic: topic.clone(),
                    key: Some(b"t-100".to_vec()),
                    value: vec![7u8; 150],
                    headers: Headers::shared([identity.clone(), Arc::new(own)]),
                }
            })
            .collect();
        for (tag, w) in writes.iter().enumerate() {
            sink.send(w, tag).await.expect("a write enqueued");
        }
        let (mut answered, mut failed) = (0, 0);
        let mut answers: Vec<Answer> = Vec::new();
        while answered < n {
            sink.answers(&mut answers).await;
            answered += answers.len();
            failed += answers.iter().filter(|a| a.result.is_err()).count();
            answers.clear();
        }
        assert_eq!(failed, 0, "Kafka refused writes");
        println!("{answered} writes answered");
    });
}
