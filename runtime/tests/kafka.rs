//! What weir relies on from Apache Kafka, checked against Apache Kafka itself: a three-node
//! cluster that loses the leader of weir's output partition, compaction of the control
//! topic, the control topic's settings, ACLs, produce quotas and a per-topic
//! `max.message.bytes`. Each test that needs brokers of its own starts them
//! (`KafkaNode`, `KafkaCluster`); the others use the test bed's.

mod bed;

use bed::*;
use rdkafka::consumer::Consumer as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `weir_<name>` from `/metrics` (0 when absent).
fn metric(weir: &Weir, name: &str) -> f64 {
    weir.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `/readyz`: (status, body).
fn readyz(weir: &Weir) -> (u16, String) {
    http_get(&format!("{}/readyz", weir.admin)).unwrap_or((0, String::new()))
}

/// A QoS 1 stream of thermostat readings, `ts` = the message's sequence number, over ten
/// devices, at about `per_s` messages a second until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(p: &str, per_s: usize) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (stop_c, sent_c, p) = (stop.clone(), sent.clone(), p.to_owned());
        let thread = std::thread::spawn(move || {
            let mut publisher = Publisher::new(&format!("{p}-pub"));
            let started = Instant::now();
            let mut i = 0usize;
            while !stop_c.load(Ordering::Relaxed) {
                publisher.publish(
                    &format!("{p}/plant/1/thermostat/t-{}", i % 10),
                    format!(r#"{{"ts":{i},"temp_c":21.5}}"#),
                    &[],
                );
                i += 1;
                sent_c.store(i, Ordering::Relaxed);
                let due = started + Duration::from_secs_f64(i as f64 / per_s as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            publisher.flush();
        });
        Stream {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Stop publishing, wait until the broker has everything; how many were sent.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

/// The cluster's settings: every topic three times over, two in sync for a write, and a
/// node that stops heartbeating is fenced after 3 s (Kafka's default is 9 s).
const CLUSTER: &str = "\
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
";

/// One sample of weir against Kafka: when, PUBACKs sent, records in Kafka then, ready.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    acked: f64,
    in_kafka: Option<i64>,
    ready: bool,
}

/// Samples weir's PUBACK count, then the output partition's end offset, then `/readyz`,
/// every 100 ms until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(admin: &str, bootstrap: &str, topic: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop_c, samples_c) = (stop.clone(), samples.clone());
        let (admin, bootstrap, topic) = (admin.to_owned(), bootstrap.to_owned(), topic.to_owned());
        let thread = std::thread::spawn(move || {
            let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", unique("sampler"))
                .create()
                .unwrap();
            while !stop_c.load(Ordering::Relaxed) {
                let at = Instant::now();
                let acked = http_get(&format!("{admin}/metrics"))
                    .and_then(|(_, m)| {
                        m.lines()
                            .find_map(|l| l.strip_prefix("weir_acked_total "))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .unwrap_or(f64::NAN);
                // Read after the PUBACK count: Kafka's count can only have grown since.
                let in_kafka = consumer
                    .fetch_watermarks(&topic, 0, Duration::from_secs(2))
                    .ok()
                    .map(|(_, high)| high);
                let ready = matches!(http_get(&format!("{admin}/readyz")), Some((200, _)));
                samples_c.lock().unwrap().push(Sample {
                    at,
                    acked,
                    in_kafka,
                    ready,
                });
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.samples()
    }
}

/// The longest time between `from` and `to` during which weir's PUBACK count did not grow.
fn longest_stall(samples: &[Sample], from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<(Instant, f64)> = None;
    for s in samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to && !s.acked.is_nan())
    {
        match since {
            Some((t, a)) if s.acked > a => {
                longest = longest.max(s.at - t);
                since = Some((s.at, s.acked));
            }
            None => since = Some((s.at, s.acked)),
            _ => {}
        }
    }
    if let Some((t, _)) = since {
        longest = longest.max(to.min(Instant::now()) - t);
    }
    longest
}

/// A continuous QoS 1 stream through weir into a three-node cluster (replication factor 3,
/// `min.insync.replicas=2`): the leader of the output partition is SIGKILLed; then, with it
/// still down, the new leader is restarted, so only one replica is left in sync and Kafka
/// refuses writes until it is back. Every message reaches Kafka exactly as published (at
/// least once; duplicates are counted and reported), weir's PUBACKs are never ahead of
/// Kafka, the stream stalls no longer than the election, and `/readyz` goes false while
/// Kafka cannot take writes and true again after.
#[test]
fn a_cluster_that_loses_its_leader_loses_nothing() {
    let mut cluster = KafkaCluster::start(3, CLUSTER);
    let bootstrap = cluster.bootstrap();
    let p = unique("leader");
    let topic = format!("{p}.thermostat");
    let config = bed::config(&p).replace("[output]", "[output]\nshutdown_timeout_s = 60");
    let weir = Weir::start(&config, &[("WEIR_KAFKA_BOOTSTRAP", &bootstrap)]);
    let sampler = Sampler::start(&weir.admin, &bootstrap, &topic);
    let stream = Stream::start(&p, 300);
    let log = || weir.log.lock().unwrap().clone();
    wait_until("the stream flows", Duration::from_secs(60), log, || {
        metric(&weir, "weir_acked_total") >= 600.0
    });

    // 1. SIGKILL the leader: the cluster elects another among the two in sync.
    let first = partition_leader(&bootstrap, &topic, 0).expect("the output partition has a leader");
    let killed_at = Instant::now();
    cluster.node(first).kill();
    let before = metric(&weir, "weir_acked_total");
    wait_until(
        "the stream flows again after the leader was killed",
        Duration::from_secs(60),
        log,
        || metric(&weir, "weir_acked_total") >= before + 600.0,
    );
    let resumed_at = Instant::now();
    let second = loop {
        match partition_leader(&cluster.nodes[(first as usize) % 3].bootstrap(), &topic, 0) {
            Some(l) if l != first => break l,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };

    // 2. With the first still down, restart the new leader: one replica is left in sync,
    // fewer than min.insync.replicas, and Kafka refuses writes until it is back.
    cluster.node(second).stop();
    wait_until(
        "weir says it is not ready while Kafka refuses writes",
        Duration::from_secs(60),
        log,
        || readyz(&weir).0 == 503,
    );
    let (_, why) = readyz(&weir);
    assert!(
        why.contains(&p) && (why.contains("in-sync") || why.contains("no leader")),
        "{why}"
    );
    cluster.node(second).restart();
    wait_until("weir is ready again", Duration::from_secs(90), log, || {
        readyz(&weir).0 == 200
    });
    let before = metric(&weir, "weir_acked_total");
    wait_until(
        "the stream flows again",
        Duration::from_secs(60),
        log,
        || metric(&weir, "weir_acked_total") >= before + 300.0,
    );

    // 3. Everything published is acknowledged, and in Kafka.
    let sent = stream.finish();
    wait_until(
        "every message is acknowledged",
        Duration::from_secs(120),
        log,
        || metric(&weir, "weir_acked_total") >= sent as f64,
    );
    let samples = sampler.finish();
    let (status, weir_log) = weir.stop();
    assert!(status.success(), "{weir_log}");

    for s in &samples {
        if let Some(n) = s.in_kafka {
            assert!(
                s.acked <= n as f64,
                "weir had sent {} PUBACKs when Kafka had {n} records",
                s.acked
            );
        }
    }
    let stall = longest_stall(&samples, killed_at, resumed_at);
    assert!(
        stall < Duration::from_secs(15),
        "PUBACKs stalled for {stall:?} after the leader was killed"
    );
    let unready: Vec<&Sample> = samples.iter().filter(|s| !s.ready).collect();
    assert!(!unready.is_empty(), "readiness went false");
    assert!(samples.last().unwrap().ready, "and true again");

    let records = consume_with(
        &topic,
        sent,
        Duration::from_secs(120),
        Duration::from_secs(2),
        &[("bootstrap.servers", &bootstrap)],
    );
    let mut decoder = Decoder::new();
    let mut seen = std::collections::HashMap::<i64, usize>::new();
    for r in &records {
        let v = decoder.decode(&r.value);
        let ts = v["ts_ms"].as_i64().unwrap();
        let device = r
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        assert_eq!(device, format!("t-{}", ts % 10), "key of message {ts}");
        assert_eq!(v["temperature_c"].as_f64(), Some(21.5), "message {ts}");
        *seen.entry(ts).or_default() += 1;
    }
    let missing: Vec<usize> = (0..sent)
        .filter(|i| !seen.contains_key(&(*i as i64)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "leader failover: {sent} messages, {duplicates} duplicates, longest PUBACK stall after the SIGKILL {stall:?}, {} samples not ready",
        unready.len()
    );
}

/// Read `topic` from the beginning on `bootstrap`: (records read, end offset).
fn records_and_end(bootstrap: &str, topic: &str) -> (usize, i64) {
    let consumer = assigned_consumer_with(
        topic,
        Duration::from_secs(10),
        &[("bootstrap.servers", bootstrap)],
    )
    .expect("the topic exists");
    let end = end_offset(bootstrap, topic);
    let mut read = 0;
    let mut last = -1;
    let start = Instant::now();
    while last + 1 < end && start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            read += 1;
            last = rdkafka::Message::offset(&m);
        }
    }
    (read, end)
}

/// Run `weir ARGS --admin URL --json` with `token`; (success, stdout, stderr).
fn cli(weir: &Weir, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .args(["--admin", &weir.admin, "--json"])
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What weir's control plane holds, as the CLI shows it: cohorts and their pins, stored
/// versions, the thermostats' history.
fn control_state(weir: &Weir) -> [serde_json::Value; 3] {
    let run = |args: &[&str]| {
        let (ok, out, err) = cli(weir, args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    [
        run(&["cohort", "list"]),
        run(&["plugin", "list"]),
        run(&["plugin", "history", "thermostats"]),
    ]
}

/// A control topic compacted as earlier weirs created it (still read, with a warning): after
/// pushes, promotes and rollbacks Kafka compacts it (made to compact at once: 100 ms
/// segments, any dirty ratio), and a restarted weir reads back exactly the same pins,
/// stored versions and history.
#[test]
fn a_compacted_control_topic_keeps_pins_versions_and_history() {
    let p = unique("compact");
    let control = format!("{p}.control");
    create_topic_with(
        &kafka(),
        &control,
        &[
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "4194304"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.001"),
            ("delete.retention.ms", "100"),
        ],
    );
    // Only 1.0.0 is seeded from the plugins folder; the others arrive by push.
    let plugins = tempfile::tempdir().unwrap();
    for f in [
        "thermostat-1.0.0",
        "fleet-gps-1.0.0",
        "meter-1.0.0",
        "adversarial-0.1.0",
    ] {
        std::fs::copy(
            plugins_dir().join(format!("{f}.wasm")),
            plugins.path().join(format!("{f}.wasm")),
        )
        .unwrap();
    }
    let config = bed::config(&p).replace(
        &format!("dir = \"{}\"", plugins_dir().display()),
        &format!("dir = \"{}\"", plugins.path().display()),
    );
    let weir = Weir::start(&config, &[]);
    let step = |args: &[&str]| {
        let (ok, _, err) = cli(&weir, args);
        assert!(ok, "{args:?}: {err}");
        // Each change in a segment of its own: the next write rolls the last.
        std::thread::sleep(Duration::from_millis(150));
    };
    let wasm = |id: &str| {
        plugins_dir()
            .join(format!("{id}.wasm"))
            .display()
            .to_string()
    };
    step(&["plugin", "push", &wasm("thermostat-1.1.0")]);
    step(&["plugin", "promote", "thermostats", "thermostat@1.1.0"]);
    step(&["plugin", "rollback", "thermostats"]);
    step(&["plugin", "promote", "thermostats", "thermostat@1.1.0"]);
    step(&["plugin", "push", &wasm("thermostat-1.1.0")]);
    step(&["plugin", "rollback", "thermostats"]);
    step(&["plugin", "promote", "thermostats", "thermostat@1.1.0"]);
    let before = control_state(&weir);
    assert_eq!(
        before[0]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cohort"] == "thermostats")
            .unwrap()["plugin"]["version"],
        "1.1.0"
    );

    // Kafka compacts: superseded pins are gone from the log (fewer records than offsets).
    let start = Instant::now();
    loop {
        let (read, end) = records_and_end(&kafka(), &control);
        if (read as i64) < end {
            eprintln!("control topic compacted: {read} records left of {end} offsets");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "Kafka did not compact {control}: {read} records of {end}"
        );
        // A write rolls the active segment so that the cleaner may take it.
        step(&["plugin", "promote", "thermostats", "thermostat@1.1.0"]);
        std::thread::sleep(Duration::from_secs(1));
    }

    let dir = weir.kill();
    let weir = Weir::restart(dir, &[]);
    let after = control_state(&weir);
    assert_eq!(before[0], after[0], "pins");
    assert_eq!(before[1], after[1], "stored versions");
    assert_eq!(before[2], after[2], "history");
    // And the pinned version runs: 1.1.0's records carry source_unit.
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    publisher.publish(
        &format!("{p}/plant/1/thermostat/t-1"),
        r#"{"ts":1,"temperature":{"value":70.0,"unit":"F"}}"#,
        &[],
    );
    publisher.flush();
    let records = consume(
        &format!("{p}.thermostat"),
        1,
        Duration::from_secs(60),
        Duration::from_millis(200),
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].header("weir.plugin"), "thermostat@1.1.0");
}

/// Nobody who may write the control topic can erase a signed pin through the log cleaner:
/// weir keeps every record of the topic, so an unsigned record and a tombstone under the
/// pin's key (written with an independent client) leave the pin in place, in the running
/// weir and in one started after the cleaner has run. A compacted witness topic given the
/// same records and the same eager cleaner settings shows the cleaner ran (and what it does
/// to a compacted topic: the pin is gone).
#[test]
fn a_signed_pin_cannot_be_erased_through_the_log_cleaner() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p = unique("erase");
    let control = format!("{p}.control");
    let witness = format!("{p}.witness");
    let eager = [
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.001"),
        ("delete.retention.ms", "100"),
    ];
    let weir = Weir::start(&bed::config(&p), &[]);
    // (AlterConfigs replaces the whole set: weir's own settings are named again.)
    let mut control_config = vec![
        ("cleanup.policy", "delete"),
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("max.message.bytes", "4194304"),
    ];
    control_config.extend(eager);
    alter_topic(&kafka(), &control, &control_config);
    let mut witness_config = vec![("cleanup.policy", "compact")];
    witness_config.extend(eager);
    create_topic_with(&kafka(), &witness, &witness_config);

    let (ok, _, err) = cli(
        &weir,
        &["plugin", "promote", "thermostats", "thermostat@1.1.0"],
    );
    assert!(ok, "{err}");
    let pinned = |weir: &Weir| {
        control_state(weir)[0]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cohort"] == "thermostats")
            .unwrap()["plugin"]["version"]
            .clone()
    };
    assert_eq!(pinned(&weir), "1.1.0");

    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let forged = serde_json::json!({
        "cohort": "thermostats",
        "plugin": {"name": "thermostat", "version": "1.0.0", "sha256": "0".repeat(64)},
        "previous": null, "rollback_to": [], "replaces": null, "at_ms": 1, "by": "ops",
    })
    .to_string();
    let write = |topic: &str, key: &str, value: Option<&str>| {
        let mut record = BaseRecord::<str, str>::to(topic).key(key).partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    write(&witness, "pin/thermostats", Some("signed"));
    for topic in [&control, &witness] {
        write(topic, "pin/thermostats", Some(&forged));
        write(topic, "pin/thermostats", None);
    }
    // The cleaner takes only closed segments: keep rolling both (a key weir does not write
    // is ignored by its readers) until it has cleaned the witness, twice (the cleaner takes
    // the dirtiest log first, so a compacted control topic would be cleaned in between).
    let mut n = 0;
    let mut removed = 0;
    for round in 0..2 {
        if round > 0 {
            write(&witness, "pin/thermostats", Some(&forged));
            write(&witness, "pin/thermostats", None);
        }
        let start = Instant::now();
        loop {
            let (read, end) = records_and_end(&kafka(), &witness);
            if end - read as i64 > removed {
                removed = end - read as i64;
                eprintln!("witness cleaned: {read} records left of {end} offsets");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "Kafka did not clean the witness {witness}: {read} records of {end}"
            );
            n += 1;
            for topic in [&control, &witness] {
                write(topic, &format!("roll/{n}"), Some("x"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    let (read, end) = records_and_end(&kafka(), &control);
    assert_eq!(read as i64, end, "the control topic lost records");
    assert_eq!(pinned(&weir), "1.1.0", "the running weir");
    let dir = weir.kill();
    let weir = Weir::restart(dir, &[]);
    assert_eq!(
        pinned(&weir),
        "1.1.0",
        "a weir started after the cleaner ran"
    );
}

/// weir creates its control topic keeping every record for good (not compacted) with room
/// for the largest component, and refuses at start-up one that exists with records that age
/// out or a `max.message.bytes` too small, naming the setting and the fix.
#[test]
fn the_control_topic_keeps_every_record_and_is_big_enough() {
    let p = unique("ctl");
    let weir = Weir::start(&bed::config(&p), &[]);
    drop(weir);
    let described = kafka_tool(
        "org.apache.kafka.tools.ConfigCommand",
        &[
            "--bootstrap-server",
            &kafka(),
            "--describe",
            "--entity-type",
            "topics",
            "--entity-name",
            &format!("{p}.control"),
        ],
    );
    assert!(
        described.contains("cleanup.policy=delete")
            && described.contains("retention.ms=-1")
            && described.contains("retention.bytes=-1")
            && described.contains("max.message.bytes=4194304"),
        "{described}"
    );

    let p = unique("ctldel");
    create_topic_with(
        &kafka(),
        &format!("{p}.control"),
        &[("cleanup.policy", "delete"), ("retention.ms", "604800000")],
    );
    let err = start_fails(&bed::config(&p), &[]);
    assert!(
        err.contains("plugins.control_topic")
            && err.contains("retention.ms=604800000")
            && err
                .contains("--add-config retention.ms=-1,retention.bytes=-1,cleanup.policy=delete"),
        "{err}"
    );

    let p = unique("ctlsmall");
    create_topic_with(
        &kafka(),
        &format!("{p}.control"),
        &[("retention.ms", "-1"), ("max.message.bytes", "1048588")],
    );
    let err = start_fails(&bed::config(&p), &[]);
    assert!(
        err.contains("plugins.control_topic") && err.contains("max.message.bytes=1048588"),
        "{err}"
    );
}

/// A topic whose `max.message.bytes` is smaller than weir's records: each message goes to
/// quarantine as `sink.produce-failed`, saying Kafka found it too large and that none of
/// its records were published; other cohorts go on.
#[test]
fn a_record_over_the_topics_max_message_bytes_is_quarantined() {
    let p = unique("mmb");
    create_topic_with(
        &kafka(),
        &format!("{p}.thermostat"),
        &[("max.message.bytes", "200")],
    );
    let weir = Weir::start(&bed::config(&p), &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..3 {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{i}"),
            format!(r#"{{"ts":{i},"temp_c":20}}"#),
            &[],
        );
        publisher.publish(
            &format!("{p}/fleet/v-{i}/gps"),
            format!(r#"{{"positions":[{{"ts":{i},"lat":48.1,"lon":11.5}}]}}"#),
            &[],
        );
    }
    publisher.flush();
    let q = consume(
        &format!("{p}.quarantine"),
        3,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    assert_eq!(q.len(), 3, "{}", weir.log.lock().unwrap());
    for r in &q {
        assert_eq!(r.header("weir.error.code"), "sink.produce-failed");
        assert_eq!(r.header("weir.error.records-published"), "0");
        assert!(
            r.header("weir.error.message")
                .contains("MessageSizeTooLarge")
                || r.header("weir.error.message").contains("too large"),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(count(&format!("{p}.fleet"), 3, Duration::from_secs(30)), 3);
    assert_eq!(
        count(&format!("{p}.thermostat"), 1, Duration::from_secs(2)),
        0
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

/// A Kafka of the test's own with an authorizer: SASL SCRAM-SHA-256 (user `weir`) on
/// `sasl`, and PLAINTEXT for the test's own clients and tools, as a super user.
fn authorizing_kafka(dir: &std::path::Path, sasl: u16) -> KafkaNode {
    KafkaNode::single(
        dir,
        &format!(
            "listeners=PLAINTEXT://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{controller_port}},SASL_PLAINTEXT://127.0.0.1:{sasl}
advertised.listeners=PLAINTEXT://127.0.0.1:{{port}},SASL_PLAINTEXT://127.0.0.1:{sasl}
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
"
        ),
        &["SCRAM-SHA-256=[name=weir,password=weir-Secret-1]"],
    )
}

/// `kafka-acls` on `bootstrap`: allow User:weir `operations` on `resource` (`--topic X`,
/// `--group X`, ...), or remove that when `add` is false.
fn acl(bootstrap: &str, add: bool, resource: &[&str], operations: &[&str]) {
    let mut args = vec!["--bootstrap-server", bootstrap];
    args.push(if add { "--add" } else { "--remove" });
    args.extend(["--allow-principal", "User:weir"]);
    if !add {
        args.push("--force");
    }
    for op in operations {
        args.extend(["--operation", op]);
    }
    args.extend(resource);
    kafka_tool("org.apache.kafka.tools.AclCommand", &args);
}

/// weir's principal may write every cohort topic but one. One it may not even describe
/// stops start-up, naming the topic and the permission; one it may describe but not write
/// holds that cohort's messages (unacknowledged, not quarantined) and makes weir not ready,
/// saying why; once the permission is granted, they are written and weir is ready again.
#[test]
fn a_topic_weir_may_not_write_holds_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let sasl = free_port();
    let node = authorizing_kafka(dir.path(), sasl);
    let admin = node.bootstrap();
    let p = unique("acl");
    let topics = [
        "thermostat",
        "fleet",
        "meter",
        "chaos",
        "quarantine",
        "control",
    ]
    .map(|t| format!("{p}.{t}"));
    let names: Vec<&str> = topics[..5].iter().map(String::as_str).collect();
    create_topics(&admin, &names);
    create_topic_with(
        &admin,
        &topics[5],
        &[
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "4194304"),
        ],
    );
    for t in &topics {
        if !t.ends_with(".fleet") {
            acl(
                &admin,
                true,
                &["--topic", t],
                &["Write", "Describe", "Read", "DescribeConfigs"],
            );
        }
    }
    acl(
        &admin,
        true,
        &[
            "--group",
            "weir-control",
            "--resource-pattern-type",
            "prefixed",
        ],
        &["Read"],
    );
    let bootstrap = format!("127.0.0.1:{sasl}");
    let config = format!(
        "{}\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"weir\"\n",
        bed::config(&p)
    );
    let env = [
        ("WEIR_KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("WEIR_KAFKA_SASL_PASSWORD", "weir-Secret-1"),
    ];

    // No permission at all on the fleet topic: start-up stops, naming it.
    let err = start_fails(&config, &env);
    assert!(
        err.contains(&format!("{p}.fleet"))
            && err.contains("DESCRIBE")
            && err.contains("kafka-acls"),
        "{err}"
    );

    // DESCRIBE only: weir starts; the fleet's messages are held, the others flow.
    acl(&admin, true, &["--topic", &topics[1]], &["Describe"]);
    let weir = Weir::start(&config, &env);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..5 {
        publisher.publish(
            &format!("{p}/fleet/v-{i}/gps"),
            format!(r#"{{"positions":[{{"ts":{i},"lat":48.1,"lon":11.5}}]}}"#),
            &[],
        );
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{i}"),
            format!(r#"{{"ts":{i},"temp_c":20}}"#),
            &[],
        );
    }
    publisher.flush();
    let reader = [("bootstrap.servers", admin.as_str())];
    assert_eq!(
        count_with(&topics[0], 5, Duration::from_secs(60), &reader),
        5
    );
    let log = || weir.log.lock().unwrap().clone();
    wait_until("weir is not ready", Duration::from_secs(30), log, || {
        readyz(&weir).0 == 503
    });
    let (_, why) = readyz(&weir);
    assert!(why.contains("failing and being retried"), "{why}");
    assert!(log().contains("grant the principal WRITE"), "{}", log());
    assert!(metric(&weir, "weir_kafka_stuck_writes") >= 1.0);
    // Held: nothing quarantined, and not acknowledged (the fleet's PUBACKs wait).
    assert_eq!(
        count_with(&topics[4], 1, Duration::from_secs(2), &reader),
        0
    );
    assert!(metric(&weir, "weir_acked_total") < 10.0);

    // Granted while weir runs: the held messages are written, weir is ready again.
    acl(&admin, true, &["--topic", &topics[1]], &["Write"]);
    assert_eq!(
        count_with(&topics[1], 5, Duration::from_secs(60), &reader),
        5,
        "{}",
        log()
    );
    wait_until("weir is ready again", Duration::from_secs(30), log, || {
        readyz(&weir).0 == 200
    });
    wait_until(
        "every message acknowledged",
        Duration::from_secs(30),
        log,
        || metric(&weir, "weir_acked_total") >= 10.0,
    );
    assert_eq!(
        count_with(&topics[4], 1, Duration::from_secs(2), &reader),
        0,
        "nothing quarantined"
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("weir-Secret-1"));
    drop(node);
}

/// A produce quota small enough to throttle weir: Kafka holds its produce requests back,
/// weir stops reading at its in-flight bound so the backlog stays with the MQTT broker,
/// nothing is lost, and the throttling shows in `/metrics`.
#[test]
fn a_produce_quota_slows_weir_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Kafka measures a client's rate over at least `quota.window.num - 1` windows: with its
    // default (11 one-second windows) a burst is throttled only once it exceeds ten seconds
    // of quota, which these 1,000 records (a few hundred bytes each with their headers) may
    // not. Two windows make the rate a second's, so the burst is throttled at once.
    let node = KafkaNode::single(
        dir.path(),
        "quota.window.num=2\nquota.window.size.seconds=1\n",
        &[],
    );
    let bootstrap = node.bootstrap();
    let p = unique("quota");
    // 32 KiB/s for every client: a small share of what weir writes unthrottled.
    kafka_tool(
        "org.apache.kafka.tools.ConfigCommand",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--alter",
            "--add-config",
            "producer_byte_rate=32768",
            "--entity-type",
            "clients",
            "--entity-default",
        ],
    );
    let in_flight = 100;
    let config = bed::config(&p).replace(
        "max_in_flight = 500",
        &format!("max_in_flight = {in_flight}"),
    );
    let weir = Weir::start(&config, &[("WEIR_KAFKA_BOOTSTRAP", &bootstrap)]);
    let n = 1000;
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..n {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{}", i % 10),
            format!(r#"{{"ts":{i},"temp_c":20}}"#),
            &[],
        );
    }
    publisher.flush();
    // The broker has the whole stream; weir has read only what it can hold.
    let received = metric(&weir, "weir_received_total");
    let acked = metric(&weir, "weir_acked_total");
    assert!(
        received < n as f64 && received - acked <= in_flight as f64,
        "received {received}, acknowledged {acked} of {n}"
    );
    let log = || weir.log.lock().unwrap().clone();
    wait_until(
        "Kafka's throttling shows in /metrics",
        Duration::from_secs(60),
        log,
        || metric(&weir, "weir_kafka_throttled_seconds_total") > 0.0,
    );
    wait_until(
        "every message acknowledged",
        Duration::from_secs(180),
        log,
        || metric(&weir, "weir_acked_total") >= n as f64,
    );
    let reader = [("bootstrap.servers", bootstrap.as_str())];
    let consumer =
        assigned_consumer_with(&format!("{p}.thermostat"), Duration::from_secs(10), &reader)
            .unwrap();
    let mut decoder = Decoder::new();
    let mut seen = std::collections::HashSet::new();
    let start = Instant::now();
    while seen.len() < n && start.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v = decoder.decode(rdkafka::Message::payload(&m).unwrap());
            seen.insert(v["ts_ms"].as_i64().unwrap());
        }
    }
    assert_eq!(seen.len(), n, "every message in Kafka");
    eprintln!(
        "produce quota: {n} messages, throttled for {:.1} s",
        metric(&weir, "weir_kafka_throttled_seconds_total")
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

/// A producer that fails fatally (librdkafka's `_FATAL`: an idempotent producer fenced or
/// out of sequence) can write no more; retrying its writes would stall weir for ever while
/// it looks alive. Its probe reports it, readiness says so, and the probe ends with the
/// reason, which stops `weir run` with an error exit.
#[test]
fn a_fatal_producer_error_is_reported_not_retried_for_ever() {
    let p = unique("fatal");
    let config = weir::config::Config::parse("weir.toml", &config(&p), &[]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sink = weir::sink::Sink::new(&config.kafka, "group \"fatal\"").unwrap();
        let topic = format!("{p}.out");
        sink.check_topics(&[(topic.clone(), "cohort[0].output_topic".into())])
            .await
            .unwrap();
        let metrics = Arc::new(weir::metrics::Metrics::new());
        let mut probe = sink.watch(metrics.clone(), vec![topic]);
        let started = Instant::now();
        while metrics.kafka_problem().is_some() {
            assert!(started.elapsed() < Duration::from_secs(60), "never healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reason = std::ffi::CString::new("injected by the test").unwrap();
        // SAFETY: the handle is the live producer's, and the reason outlives the call.
        #[allow(unsafe_code)]
        let injected = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                sink.native_handle(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(
            injected,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        let why = tokio::time::timeout(Duration::from_secs(30), &mut probe)
            .await
            .expect("the probe ends on a fatal error")
            .unwrap();
        assert!(why.contains("failed fatally"), "{why}");
        assert!(why.contains("injected by the test"), "{why}");
        assert!(
            metrics.not_ready().unwrap().contains("failed fatally"),
            "{:?}",
            metrics.not_ready()
        );
    });
}

/// A control topic whose last offsets hold no record (here a transaction's commit marker,
/// as a compacted tail would too): start-up reads to the partition's end instead of
/// waiting for a record at the last offset that never comes.
#[test]
fn a_control_topic_ending_in_a_transaction_marker_does_not_wedge_start_up() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p = unique("ctlgap");
    let config = config(&p);
    // weir creates the control topic with its settings.
    let (status, log) = Weir::start(&config, &[]).stop();
    assert!(status.success(), "{log}");
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("transactional.id", format!("{p}-tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(
            BaseRecord::to(&format!("{p}.control"))
                .key("someone-else/x")
                .payload("not weir's")
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    let started = Instant::now();
    let weir = Weir::start(&config, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "start-up took {:?}",
        started.elapsed()
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

/// A message whose first record reached Kafka and whose second was refused for good is
/// quarantined with `weir.error.records-published = 1` and `weir.error.records-refused =
/// 1` (the second, by its place); redriven through the same version once the topic takes
/// it, only that record is written, so the topic holds each record once.
#[test]
fn a_redrive_writes_only_the_records_kafka_does_not_have() {
    let p = unique("partial");
    let out = format!("{p}.chaos");
    create_topic_with(&kafka(), &out, &[("max.message.bytes", "5000")]);
    // Batches of at most 10 kB: the small record and the large one travel in requests of
    // their own, so Kafka takes the first and refuses the second.
    let config = bed::config(&p).replace(
        "[registry]",
        "[kafka.properties]\n\"batch.size\" = \"10000\"\n[registry]",
    );
    let weir = Weir::start(&config, &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    publisher.publish(&format!("{p}/chaos/x"), "pair:20000", &[]);
    publisher.flush();
    let q = consume(
        &format!("{p}.quarantine"),
        1,
        Duration::from_secs(60),
        Duration::from_millis(200),
    );
    assert_eq!(q.len(), 1, "{}", weir.log.lock().unwrap());
    assert_eq!(q[0].header("weir.error.code"), "sink.produce-failed");
    assert_eq!(q[0].header("weir.error.records-published"), "1");
    assert_eq!(q[0].header("weir.error.records-refused"), "1");
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");

    // The topic is fixed to take the large record; the redrive writes only it.
    alter_topic(&kafka(), &out, &[("max.message.bytes", "1000000")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &config).unwrap();
    let done = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "quarantine",
            "redrive",
            "--code",
            "sink.produce-failed",
            "--json",
            "--config",
        ])
        .arg(&path)
        .env("WEIR_NO_CACHE", "1")
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(
        (
            done["published"].as_u64(),
            done["already_published"].as_u64()
        ),
        (Some(1), Some(1)),
        "{done}"
    );
    let records = consume(&out, 3, Duration::from_secs(20), Duration::from_secs(2));
    assert_eq!(records.len(), 2, "each record once");
    assert!(records[0].value.len() < 100 && records[1].value.len() > 20_000);
    assert!(!records[1].header("weir.redrive.from").is_empty());
}

/// `exactly_once` needs Kafka to let weir hold a transactional id per MQTT session: a
/// principal that may write every topic but not use its transactional id stops start-up,
/// naming the id and the grant that fixes it; once granted, weir starts and a QoS 2
/// message reaches a `read_committed` consumer.
#[test]
fn exactly_once_stops_start_up_when_kafka_refuses_the_transactional_id() {
    let dir = tempfile::tempdir().unwrap();
    let sasl = free_port();
    let node = authorizing_kafka(dir.path(), sasl);
    let admin = node.bootstrap();
    let p = unique("txacl");
    let client_id = format!("{p}-weir");
    let sessions = format!("weir.sessions.{client_id}");
    let topics =
        ["thermostat", "fleet", "meter", "chaos", "quarantine"].map(|t| format!("{p}.{t}"));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    create_topics(&admin, &names);
    create_topic_with(
        &admin,
        &format!("{p}.control"),
        &[
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "4194304"),
        ],
    );
    for t in topics.iter().chain([&format!("{p}.control"), &sessions]) {
        acl(
            &admin,
            true,
            &["--topic", t],
            &["Write", "Describe", "Read", "DescribeConfigs", "Create"],
        );
    }
    acl(
        &admin,
        true,
        &["--group", "weir", "--resource-pattern-type", "prefixed"],
        &["Read"],
    );
    let config = format!(
        "{}\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"weir\"\n",
        bed::config(&p).replace(
            &format!("subscriptions = [\"{p}/#\"]"),
            &format!("subscriptions = [\"{p}/#\"]\nexactly_once = true"),
        )
    );
    let bootstrap = format!("127.0.0.1:{sasl}");
    let env = [
        ("WEIR_KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("WEIR_KAFKA_SASL_PASSWORD", "weir-Secret-1"),
    ];

    let txid = format!("weir.{client_id}");
    let err = start_fails(&config, &env);
    assert!(
        err.contains(&format!("{txid:?}"))
            && err.to_lowercase().contains("authorization")
            && err.contains(&format!("--transactional-id {txid}")),
        "{err}"
    );

    acl(
        &admin,
        true,
        &["--transactional-id", &txid],
        &["Write", "Describe"],
    );
    let weir = Weir::start(&config, &env);
    let mut publisher = Publisher::at_qos(&mqtt_url(), &format!("{p}-pub"), 2);
    publisher.publish(
        &format!("{p}/plant/1/thermostat/t-1"),
        r#"{"ts":1,"temp_c":20}"#.to_owned(),
        &[],
    );
    publisher.flush();
    let reader = [
        ("bootstrap.servers", admin.as_str()),
        ("isolation.level", "read_committed"),
    ];
    assert_eq!(
        count_with(&topics[0], 1, Duration::from_secs(60), &reader),
        1,
        "{}",
        weir.log.lock().unwrap()
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
    drop(node);
}

/// An idle weir spins no thread and wakes few. Its Kafka event threads (its group's
/// producer's and the control topic producer's) wait in librdkafka: rdkafka's own polling
/// loop wakes ten times a second and spins for the last millisecond of every 100 ms, about
/// 5 ticks of CPU in the 5 s watched here. The epoch thread, which ticks every 5 ms while
/// a plugin call runs, sleeps while none does (1,000 wake-ups in 5 s if it did not).
#[test]
fn an_idle_weir_spins_no_thread_and_wakes_few() {
    let p = unique("idle");
    let weir = Weir::start(&config(&p), &[]);
    let pid = weir.child.id();
    let names = ["weir-kafka-dr", "weir-control-dr", "weir-epoch"];
    let (cpu, woken) = (threads_cpu(pid), threads_woken(pid));
    for name in names {
        assert!(
            cpu.values().any(|(n, _)| n == name),
            "no thread named {name}"
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let (cpu_after, woken_after) = (threads_cpu(pid), threads_woken(pid));
    for (tid, (name, after)) in &cpu_after {
        let Some((_, before)) = cpu.get(tid).filter(|_| names.contains(&name.as_str())) else {
            continue;
        };
        let ticks = ((after - before) * 100.0).round();
        assert!(
            ticks <= 1.0,
            "idle, {name} took {ticks} ticks of CPU in 5 s"
        );
        let woke = woken_after[tid].1 - woken[tid].1;
        // The producer's statistics come once a second; a wait ends at least as often.
        let most = if name == "weir-epoch" { 2 } else { 25 };
        assert!(woke <= most, "idle, {name} woke {woke} times in 5 s");
    }
}
