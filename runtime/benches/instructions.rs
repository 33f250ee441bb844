//! weir's own work per message, on a fixed workload in one thread, for counting
//! instructions (`scripts/bench-instructions` runs it under callgrind; counts are stable
//! where times are not, so CI can hold a bound on them).
//!
//! N QoS 1 MQTT 5 PUBLISH packets of ~300 B (the drain benchmark's payloads) sit in one
//! read buffer, as after a socket read; they go through the stages of `weir run` in
//! batches of 64: the source's packet decoding, message ids, routing, the thermostat
//! plugin in the sandbox (Wasm, Avro validation and encoding), planning, and the courier
//! with a sink that answers every write at once and an MQTT session that takes the acks.
//! Left out: socket I/O, librdkafka and the thread hand-overs of `weir run`, which the
//! drain benchmark measures.
//!
//! `instructions N` processes N messages and prints what it did. Only `workload` is
//! counted (callgrind's `--toggle-collect`), so start-up (engine, plugin, instance) is not;
//! the per-message figure is its count divided by N.

#[path = "../tests/bed/mod.rs"]
mod bed;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use weir::control::Version;
use weir::deliver::{Acks, Arrived, Courier, Writes};
use weir::lifecycle::Live;
use weir::metrics::Metrics;
use weir::pipeline::{self, MessageIds};
use weir::sink::{Answer, Tag};
use weir::source::codec::{self, Frame, Proto};
use weir::transform::{Host, Limits};
use weir_core::message::Message;
use weir_core::plan::{CohortPlan, Input, Topology};
use weir_core::route::Rule;
use weir_core::write::{Failure, Write};

const BATCH: usize = 64;

/// The allocator `weir run` uses.
#[global_allocator]
static ALLOCATOR: weir::Allocator = mimalloc::MiMalloc;

/// A sink that takes every write and answers it at once.
#[derive(Clone, Default)]
struct Answering {
    sent: Arc<Mutex<Vec<Tag>>>,
}

impl Writes for Answering {
    async fn send(&self, _w: &Write, tag: Tag) -> Result<(), Failure> {
        self.sent.lock().unwrap().push(tag);
        Ok(())
    }
}

/// An MQTT session that counts the acks it is given.
#[derive(Clone, Default)]
struct Session {
    acked: Arc<Mutex<u64>>,
}

struct Token(Instant);

impl Arrived for Token {
    fn arrived(&self) -> Instant {
        self.0
    }
}

impl Acks for Session {
    type Token = Token;
    fn ack(&self, tokens: Vec<Token>) {
        *self.acked.lock().unwrap() += tokens.len() as u64;
    }
}

/// N PUBLISH packets back to back, as one read from the broker's socket.
fn packets(n: usize) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..n {
        let mut p = Publish::new(
            format!("plant/7/thermostat/t-{}", i % 100),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            bed::bench_payload(i),
            Some(PublishProperties::default()),
        );
        p.pkid = (i % 65_535) as u16 + 1;
        Packet::Publish(p).write(&mut out, None).unwrap();
    }
    out
}

fn live(root: &std::path::Path) -> Live {
    // A small pool: this runs under valgrind, which cannot reserve a full pool's address
    // space. The pool's size does not change the work done per message.
    let limits = Limits {
        max_instances: 2,
        ..Limits::default()
    };
    let cache = root.join("target/bench-instructions-cache");
    let host = Host::new(limits, Some(&cache)).expect("the Wasm engine starts");
    let wasm = root.join("target/plugins/thermostat-1.0.0.wasm");
    let plugin = host
        .load_file(&wasm)
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask plugins` first)"));
    let configured = plugin.configure(vec![], "thermostat").expect("init");
    let info = plugin.info();
    let cohort = weir::config::Cohort {
        name: "thermostat".into(),
        topic: "plant/+/thermostat/+".into(),
        properties: Default::default(),
        plugin: info.id(),
        output_topic: "telemetry.thermostat".into(),
        key: "{topic[3]}".into(),
        key_template: weir_core::route::KeyTemplate::parse("{topic[3]}").unwrap(),
        config: Default::default(),
        plugin_time_ms: None,
        plugin_memory_mib: None,
        plugin_output_kib: None,
        group: None,
    };
    let plan: CohortPlan =
        weir::lifecycle::cohort_plan(&cohort, &plugin, 1, "telemetry.thermostat");
    Live {
        topology: Arc::new(Topology {
            cohorts: vec![plan],
            rules: vec![Rule {
                filter: cohort.topic.clone(),
                properties: vec![],
            }],
            quarantine_topic: "weir.quarantine".into(),
            raw_topic: None,
        }),
        plugins: vec![Arc::new(configured)],
        versions: vec![Version {
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: info.sha256.clone(),
        }],
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let live = live(root);
    let buf = packets(n);
    let (emitted, acked) = workload(&live, buf);
    assert_eq!(emitted, n, "every message transformed to records");
    assert_eq!(acked, n as u64, "every message acknowledged");
    println!("messages {n} emitted {emitted} acked {acked}");
}

/// The counted part: every message in `buf` from its packet to its ack. Returns the
/// messages the plugin emitted records for and the acks the session was given.
#[inline(never)]
fn workload(live: &Live, mut buf: BytesMut) -> (usize, u64) {
    let metrics = Arc::new(Metrics::default());
    let sink = Answering::default();
    let session = Session::default();
    let mut courier = Courier::new(sink.clone(), session.clone(), metrics.clone());
    let mut ids = MessageIds::default();
    let cohorts = [0usize];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut emitted = 0usize;
    rt.block_on(async {
        while !buf.is_empty() {
            let mut inputs = Vec::with_capacity(BATCH);
            let mut tokens = Vec::with_capacity(BATCH);
            while inputs.len() < BATCH && !buf.is_empty() {
                let fixed = codec::fixed_header(&buf).unwrap().unwrap();
                assert!(buf.len() >= fixed.frame_len());
                let Frame::Publish(p) = Proto::V5.decode(&mut buf).unwrap() else {
                    panic!("not a PUBLISH")
                };
                tokens.push(Token(Instant::now()));
                inputs.push(Input {
                    id: ids.assign(),
                    message: Message {
                        topic: p.topic,
                        payload: p.payload,
                        properties: p.properties,
                        content_type: p.content_type,
                        received_at_ms: 1_700_000_000_000,
                    },
                    retained: p.retain,
                    oversize: None,
                });
            }
            let routes: Vec<Option<usize>> = inputs
                .iter()
                .map(|i| live.topology.route_among(&i.message, &cohorts))
                .collect();
            let outcomes = pipeline::transform(live, &metrics, &mut inputs, &routes);
            emitted += outcomes
                .iter()
                .filter(|o| matches!(o, Some(weir::transform::Outcome::Emit(_))))
                .count();
            let messages = tokens
                .into_iter()
                .zip(inputs)
                .zip(routes)
                .zip(outcomes)
                .map(|(((t, i), r), o)| (t, i, r, o))
                .collect();
            courier.take(&live.topology, messages).await;
            loop {
                let tags = std::mem::take(&mut *sink.sent.lock().unwrap());
                if tags.is_empty() {
                    break;
                }
                let mut answers = tags
                    .into_iter()
                    .map(|tag| Answer {
                        tag,
                        result: Ok(()),
                    })
                    .collect();
                courier.answered(&mut answers).await;
            }
        }
    });
    assert_eq!(courier.in_progress(), 0, "every message settled");
    let acked = *session.acked.lock().unwrap();
    (emitted, acked)
}
