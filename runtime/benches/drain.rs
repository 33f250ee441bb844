//! Draining a reconnect-storm backlog: N QoS 1 messages of ~300 B JSON (default 200,000)
//! wait in a persistent MQTT session; how fast does each consumer empty it, and at what CPU
//! cost? All legs in one run, on the same test bed:
//!
//! - raw MQTT drain: a plain rumqttc client (acks each message at once) resumes its session
//!   and receives the backlog; its process CPU per message; and its rate until the broker
//!   has taken every ack, the work weir's leg includes (see `raw_mqtt_drain`);
//! - raw Kafka produce: a plain idempotent, acks=all producer writing the same bytes
//!   (connected before the clock starts), then again with six headers like weir's;
//! - weir drain: `weir run` resumes its session, and thermostat → Avro → Kafka → PUBACK
//!   empties it; timed from its MQTT connection to its last PUBACK (`weir_acked_total`),
//!   weir's CPU over the same span and how it splits between its threads' roles (source
//!   and acks, transform, librdkafka), peak RSS;
//! - under each drain and produce leg, what the test bed's mosquitto and Kafka broker spent
//!   per message when they run on this machine (CPU, reads and writes, context switches):
//!   they share its cores with weir, so they bound any drain's rate here: under weir's leg,
//!   what the whole machine spent per message, the rate that allows on its cores, and what
//!   0.8× the raw MQTT drain would leave weir beside the services;
//! - latency: then, at half of weir's drain rate, publish-arrival-to-PUBACK p50 / p99 from
//!   weir's `weir_ack_seconds` histogram (the broker hop on loopback is not included), the
//!   part of it spent waiting on Kafka (`weir_produce_seconds`), and, for comparison, a raw
//!   producer's send-to-answer latency at the same rate;
//! - idle: then weir's CPU with nothing to do, over 4 s, by thread name, and its threads'
//!   wake-ups per second. With exactly once, "nothing to do" starts only when the broker
//!   has sent its last PUBREL: the leg first waits until weir commits no transaction for a
//!   second and prints how long that took. (mosquitto finds the message of each PUBREC by a
//!   walk of the session's in-flight list, `db__message_update_outgoing`: with thousands in
//!   flight its PUBRELs trail weir's PUBRECs by seconds, one per TCP segment, and weir,
//!   which forgets each released id in a transaction before its PUBCOMP, is busy until they
//!   end. Measured before that wait, weir looked busy when idle.)
//!
//! `WEIR_BENCH_CONFIG` is appended to weir's config, e.g. `[kafka.properties]` to try a
//! producer setting. `WEIR_BENCH_WEIR` runs another weir binary (a copy of an earlier
//! build, to compare two builds on the same test bed). `WEIR_BENCH_LATENCY_RATE` (msg/s)
//! measures the latency at that rate instead of half the drain rate's, so that two builds
//! with different drain rates are compared under the same load. `WEIR_BENCH_EXACTLY_ONCE=0`
//! leaves out the exactly-once leg (half the run), for comparing builds on the QoS 1 path.
//! `WEIR_BENCH_IN_FLIGHT` sets weir's `mqtt.max_in_flight` (default 5000).
//!
//! Run: `scripts/bench-drain` (WEIR_BENCH_MESSAGES, default 200000; 1000000 for the RSS
//! target).

#[path = "../tests/bed/mod.rs"]
mod bed;

use rdkafka::ClientContext;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn options(id: &str, persistent: bool) -> MqttOptions {
    let url = bed::mqtt_url();
    let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(id, host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(60));
    if persistent {
        o.set_clean_start(false);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(3600);
        props.receive_maximum = Some(u16::MAX);
        o.set_connect_properties(props);
    }
    o
}

/// Publish `n` messages (QoS 1, or 2 with `qos2`) at full speed, or paced to `rate`
/// msg/s, and wait for the broker's PUBACKs (PUBCOMPs).
async fn publish(
    id: &str,
    (n, qos2): (usize, bool),
    rate: Option<f64>,
    topic: impl Fn(usize) -> String,
) {
    let (client, mut eventloop) = AsyncClient::new(options(id, false), 10_000);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            if let Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) =
                eventloop.poll().await
            {
                acked += 1;
            }
        }
    });
    let qos = if qos2 {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    };
    let start = Instant::now();
    for i in 0..n {
        if let Some(rate) = rate
            && i % 50 == 0
        {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        client
            .publish(topic(i), qos, false, bed::bench_payload(i))
            .await
            .unwrap();
    }
    acks.await.unwrap();
    let _ = client.disconnect().await;
}

/// Make a persistent session subscribed to `filter`, then leave it.
async fn make_session(id: &str, filter: &str) {
    let (client, mut eventloop) = AsyncClient::new(options(id, true), 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while eventloop.poll().await.is_ok() {}
}

/// msg/s of the plain producer that writes beside weir during the latency phase.
const BESIDE_RATE: f64 = 2000.0;

/// The test bed's services, by the pid files `scripts/testbed up` writes. They run on the
/// same cores as weir, so what they spend per message bounds every drain on this machine.
const SERVICES: [(&str, &str); 2] = [
    ("mosquitto", "mosquitto.pid"),
    ("Kafka broker", "kafka.pid"),
];

/// A test bed service by name, and what it has done so far.
type Service = (&'static str, bed::Activity);

/// What each service running on this machine has done so far (none for a bed elsewhere).
fn services_activity() -> Vec<Service> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.testbed");
    SERVICES
        .iter()
        .filter_map(|&(name, file)| {
            let pid = std::fs::read_to_string(dir.join(file)).ok()?;
            Some((name, bed::proc_activity(pid.trim().parse().ok()?)?))
        })
        .collect()
}

/// Each service read at both readings: its name, and what it had done at each.
fn spans<'a>(
    before: &'a [Service],
    after: &'a [Service],
) -> impl Iterator<Item = (&'static str, &'a bed::Activity, &'a bed::Activity)> {
    after.iter().filter_map(|(name, end)| {
        let (_, start) = before.iter().find(|(b, _)| b == name)?;
        Some((*name, start, end))
    })
}

/// What each service did per message between two readings, one line each: CPU, and the
/// system calls and wake-ups that tell a busier peer from a chattier one.
fn print_services(before: &[Service], after: &[Service], n: usize) {
    for (name, start, end) in spans(before, after) {
        println!(
            "  {:<53} {}",
            format!("{name} (test bed, same machine)"),
            start.per_message(end, n)
        );
    }
}

/// What weir's leg cost the whole machine per message when the test bed runs on it (weir,
/// mosquitto and the Kafka broker share its cores), the rate that allows, and what 0.8× the
/// raw MQTT drain would leave weir beside the services: their share is a ceiling no client
/// on this machine can pass.
fn print_budget(weir: f64, (before, after): (&[Service], &[Service]), n: usize, mqtt_rate: f64) {
    if spans(before, after).count() < SERVICES.len() {
        // A bed elsewhere: weir's own CPU sets the rate.
        return;
    }
    let services: f64 = spans(before, after)
        .map(|(_, start, end)| (end.cpu - start.cpu) * 1e6 / n.max(1) as f64)
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let total = weir + services;
    println!(
        "  {:<53} {total:>6.2} µs/msg  at most {:.0} msg/s",
        format!("the machine: weir and the test bed, {cores} cores"),
        cores as f64 * 1e6 / total
    );
    println!(
        "  {:<53} {:>6.2} µs/msg",
        "0.8 × the raw MQTT drain would leave weir",
        cores as f64 * 1e6 / (0.8 * mqtt_rate) - services
    );
}

/// A plain rumqttc client draining its session's backlog: (msg/s as received, msg/s until
/// the broker took every ack, the client's CPU µs per message).
///
/// mosquitto writes a backlog a client reads fast in one loop and reads the acks only after
/// it (three reads each: the type, the length, the packet id), so a drain timed to the last
/// message received leaves the broker's work on the acks outside its window. weir's leg
/// counts that work, interleaved with its own, so this leg also reports the span until an
/// UNSUBSCRIBE sent after the last ack is answered: the broker reads a client's packets in
/// order, so by then it has taken every ack. The services' line covers that span.
async fn raw_mqtt_drain(n: usize, run: &str) -> (f64, f64, f64) {
    let id = format!("{run}-rawdrain");
    make_session(&id, &format!("{run}/raw/#")).await;
    publish(&format!("{run}-rawpub"), (n, false), None, |i| {
        format!("{run}/raw/t-{}", i % 100)
    })
    .await;
    let cpu = bed::proc_usage(std::process::id()).0;
    let services = services_activity();
    let start = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(options(&id, true), 10_000);
    let mut got = 0;
    while got < n {
        if let Event::Incoming(Packet::Publish(_)) = eventloop.poll().await.unwrap() {
            got += 1;
        }
    }
    let received = start.elapsed();
    client
        .unsubscribe(format!("{run}/raw/after-the-acks"))
        .await
        .unwrap();
    while !matches!(
        eventloop.poll().await.unwrap(),
        Event::Incoming(Packet::UnsubAck(_))
    ) {}
    let taken = start.elapsed();
    let cpu = bed::proc_usage(std::process::id()).0 - cpu;
    let rate = n as f64 / received.as_secs_f64();
    let taken_rate = n as f64 / taken.as_secs_f64();
    let cpu = cpu * 1e6 / n as f64;
    println!(
        "raw MQTT drain (rumqttc, ack each at once):     {rate:>9.0} msg/s {cpu:>6.2} µs CPU/msg"
    );
    println!("  until the broker took every ack:               {taken_rate:>9.0} msg/s");
    print_services(&services, &services_activity(), n);
    // Leave nothing behind: end the session.
    let _ = client.disconnect().await;
    (rate, taken_rate, cpu)
}

/// Collects each record's send-to-answer time.
#[derive(Clone, Default)]
struct Timed(Arc<Mutex<Vec<f64>>>);

impl ClientContext for Timed {}

impl ProducerContext for Timed {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, r: &DeliveryResult<'_>, sent: Box<Instant>) {
        if let Err((e, _)) = r {
            panic!("raw Kafka write failed: {e}");
        }
        self.0.lock().unwrap().push(sent.elapsed().as_secs_f64());
    }
}

/// A plain idempotent producer to `topic`, connected, with its producer id and the topic's
/// metadata, so that neither raw leg times its start-up.
fn raw_producer(topic: &str) -> (ThreadedProducer<Timed>, Timed) {
    bed::create_topics(&bed::kafka(), &[topic]);
    let timed = Timed::default();
    let producer: ThreadedProducer<Timed> = bed::raw_producer_config()
        .create_with_context(timed.clone())
        .unwrap();
    let warm = BaseRecord::<str, str, _>::with_opaque_to(topic, Box::new(Instant::now()))
        .payload("warm-up");
    producer.send(warm).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(60)).unwrap();
    timed.0.lock().unwrap().clear();
    (producer, timed)
}

/// msg/s of a plain idempotent producer writing the same bytes; with `headers`, each record
/// also carries six headers of the names and sizes weir writes (plugin, its sha256, cohort,
/// message id, MQTT topic, arrival time), so that the broker's share of those is measured
/// apart from weir's.
fn raw_kafka(n: usize, run: &str, headers: bool) -> f64 {
    let topic = format!("{run}.rawkafka{}", if headers { "h" } else { "" });
    let (producer, _) = raw_producer(&topic);
    let services = services_activity();
    let start = Instant::now();
    for i in 0..n {
        let p = bed::bench_payload(i);
        let key = format!("t-{}", i % 100);
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(Instant::now()))
            .payload(&p)
            .key(&key);
        if headers {
            let id = format!("{:016x}-{i:010}", std::process::id());
            let mqtt_topic = format!("{run}/plant/1/thermostat/t-{}", i % 100);
            let at = (1_700_000_000_000u64 + i as u64).to_string();
            record = record.headers(
                OwnedHeaders::new_with_capacity(6)
                    .insert(Header {
                        key: "weir.plugin",
                        value: Some("thermostat@1.0.0"),
                    })
                    .insert(Header {
                        key: "weir.plugin.sha256",
                        value: Some(&"5e".repeat(32)),
                    })
                    .insert(Header {
                        key: "weir.cohort",
                        value: Some("thermostats"),
                    })
                    .insert(Header {
                        key: "weir.message.id",
                        value: Some(&id),
                    })
                    .insert(Header {
                        key: "weir.mqtt.topic",
                        value: Some(&mqtt_topic),
                    })
                    .insert(Header {
                        key: "weir.received_at",
                        value: Some(&at),
                    }),
            );
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if headers {
        println!("  the same, six headers as weir writes:          {rate:>9.0} msg/s");
    } else {
        println!("raw Kafka produce (idempotent, acks=all):       {rate:>9.0} msg/s");
    }
    print_services(&services, &services_activity(), n);
    rate
}

/// (p50, p99) seconds from a raw idempotent producer's send to Kafka's answer, paced to
/// `rate` msg/s for `n` records: the broker's own share of weir's latency.
fn raw_kafka_latency(n: usize, rate: f64, run: &str) -> (f64, f64) {
    Paced::new(run, "rawkafka").run(n, rate, 50)
}

/// A raw idempotent producer, ready to send paced records to its own topic and time
/// Kafka's answers.
struct Paced {
    topic: String,
    producer: ThreadedProducer<Timed>,
    timed: Timed,
}

impl Paced {
    /// A producer to `{run}.{leg}`, the topic made and one record answered.
    fn new(run: &str, leg: &str) -> Paced {
        let topic = format!("{run}.{leg}");
        let (producer, timed) = raw_producer(&topic);
        Paced {
            topic,
            producer,
            timed,
        }
    }

    /// (p50, p99) seconds from send to answer of `n` records at `rate` msg/s, sent in
    /// bursts of `burst`.
    fn run(self, n: usize, rate: f64, burst: usize) -> (f64, f64) {
        let start = Instant::now();
        for i in 0..n {
            if i % burst == 0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let p = bed::bench_payload(i);
            let key = format!("t-{}", i % 100);
            let record = BaseRecord::with_opaque_to(&self.topic, Box::new(Instant::now()))
                .payload(&p)
                .key(&key);
            self.producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        self.producer.flush(Duration::from_secs(120)).unwrap();
        let mut t = std::mem::take(&mut *self.timed.0.lock().unwrap());
        t.sort_by(f64::total_cmp);
        let at = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
        (at(0.5), at(0.99))
    }
}

/// A running `weir run`, its log followed for the MQTT connection and the admin address.
struct Weir {
    child: std::process::Child,
    admin: String,
    /// At weir's MQTT connection: the time, its CPU seconds and its threads' CPU.
    connected: std::sync::mpsc::Receiver<(Instant, f64, Threads)>,
}

/// CPU seconds of each live thread of a process, by thread id, with its name
/// (`bed::threads_cpu`).
type Threads = std::collections::HashMap<u32, (String, f64)>;

/// The role a weir thread plays, by its name (see the thread names in `weir run`).
fn role(thread: &str) -> &'static str {
    if thread.starts_with("weir-io-") {
        "MQTT source, routing, planning, Kafka hand-off, acks"
    } else if thread.starts_with("tokio-rt-worker") {
        "main runtime (admin, metrics)"
    } else if thread.starts_with("rdk:")
        || thread.starts_with("producer poll")
        || matches!(thread, "weir-kafka-dr" | "weir-control-dr")
    {
        "librdkafka (batching, network, delivery reports)"
    } else if thread.starts_with("weir-")
        && !matches!(thread, "weir-epoch" | "weir-control")
        && !thread.starts_with("weir-slots")
        && !thread.starts_with("weir-sasl")
    {
        "transform: plugin, Avro encoding"
    } else {
        "other threads"
    }
}

/// Where weir's CPU went between two thread readings, per message, by role; `total` is the
/// process's CPU over the span (it also counts threads that ended in between).
fn print_roles(before: &Threads, after: &Threads, total: f64, n: usize) {
    let mut roles = spent_by(before, after, |name| role(name).to_owned());
    let counted: f64 = roles.iter().map(|r| r.1).sum();
    if total > counted {
        add_to(&mut roles, "other threads".into(), total - counted);
    }
    roles.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (r, cpu) in roles {
        println!(
            "  {r:<53} {:>6.2} µs/msg {:>5.1} %",
            cpu * 1e6 / n as f64,
            cpu * 100.0 / total.max(f64::EPSILON)
        );
    }
}

/// CPU seconds each thread of `after` spent since `before`, summed by `key` of its name.
fn spent_by(before: &Threads, after: &Threads, key: impl Fn(&str) -> String) -> Vec<(String, f64)> {
    let mut sums = Vec::new();
    for (tid, (name, cpu)) in after {
        add_to(
            &mut sums,
            key(name),
            cpu - before.get(tid).map_or(0.0, |b| b.1),
        );
    }
    sums
}

/// Add `cpu` to `key`'s sum (few keys: a short list).
fn add_to(sums: &mut Vec<(String, f64)>, key: String, cpu: f64) {
    match sums.iter_mut().find(|(k, _)| *k == key) {
        Some(e) => e.1 += cpu,
        None => sums.push((key, cpu)),
    }
}

/// What weir spends with nothing to do, over a few seconds: its total as a share of a core,
/// each thread name that used any, and how often its threads woke (polling loops and
/// tickers; an idle edge gateway pays for them all day). CPU is counted in clock ticks:
/// 0.25 % is one tick in 4 s.
fn print_idle(pid: u32) {
    const SPAN: Duration = Duration::from_secs(4);
    let (cpu_start, _) = bed::proc_usage(pid);
    let (before, woken) = (bed::threads_cpu(pid), bed::threads_woken(pid));
    std::thread::sleep(SPAN);
    let (cpu_end, _) = bed::proc_usage(pid);
    let (after, woken_after) = (bed::threads_cpu(pid), bed::threads_woken(pid));
    let mut by_name = spent_by(&before, &after, str::to_owned);
    by_name.retain(|(_, cpu)| *cpu > 0.0);
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    let share = |cpu: f64| cpu * 100.0 / SPAN.as_secs_f64();
    let threads: Vec<String> = by_name
        .iter()
        .map(|(name, cpu)| format!("{name} {:.2} %", share(*cpu)))
        .collect();
    let wakeups: u64 = woken_after
        .iter()
        .filter_map(|(tid, (_, n))| Some(n - woken.get(tid)?.1))
        .sum();
    println!(
        "weir idle, {} s:                                {:>6.2} % of a core{}, {:.0} wake-ups/s",
        SPAN.as_secs(),
        share(cpu_end - cpu_start),
        if threads.is_empty() {
            String::new()
        } else {
            format!(" ({})", threads.join(", "))
        },
        wakeups as f64 / SPAN.as_secs_f64()
    );
}

fn start_weir(config: &std::path::Path) -> Weir {
    let weir =
        std::env::var("WEIR_BENCH_WEIR").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").into());
    let mut child = Command::new(weir)
        .args(["run", "--config"])
        .arg(config)
        .env("WEIR_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (admin_tx, admin_rx) = std::sync::mpsc::channel();
    let (conn_tx, connected) = std::sync::mpsc::channel();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(addr) = line.split("admin listening on ").nth(1) {
                let _ = admin_tx.send(addr.trim().to_owned());
            }
            if line.contains("MQTT 5 connected") {
                let _ = conn_tx.send((
                    Instant::now(),
                    bed::proc_usage(pid).0,
                    bed::threads_cpu(pid),
                ));
            }
        }
    });
    let admin = admin_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("weir opens its admin listener");
    Weir {
        child,
        admin,
        connected,
    }
}

impl Weir {
    /// `weir_acked_total` (a line lookup: this is polled while weir works).
    fn acked(&self) -> u64 {
        self.counter("weir_acked_total")
    }

    /// A counter's value from weir's metrics (0 before its first count).
    fn counter(&self, name: &str) -> u64 {
        let (_, text) = bed::http_get(&format!("{}/metrics", self.admin)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// Wait until weir has committed no transaction for a second: the broker's PUBRELs
    /// have all come and been forgotten. How long that took.
    fn releases_done(&self) -> Duration {
        const QUIET: Duration = Duration::from_secs(1);
        let (start, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(300));
        let (mut last, mut changed) = (self.counter("weir_transactions_committed_total"), start);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.counter("weir_transactions_committed_total");
            if now != last {
                (last, changed) = (now, Instant::now());
            } else if changed.elapsed() >= QUIET {
                return changed - start;
            }
            assert!(Instant::now() < deadline, "weir's transactions end");
        }
    }

    fn stop(mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

/// Cumulative buckets of the histogram `weir_{name}_seconds` (the default group's, for
/// the per-group ack histogram).
fn buckets(admin: &str, name: &str) -> Vec<(f64, f64)> {
    let (_, text) = bed::http_get(&format!("{admin}/metrics")).unwrap();
    let labels = if name == "ack" {
        r#"group="default""#
    } else {
        ""
    };
    bed::buckets(&text, &format!("weir_{name}_seconds"), labels)
}

/// Plugin calls made so far: the count of `weir_transform_seconds`, over every cohort.
fn plugin_calls(admin: &str) -> u64 {
    let (_, text) = bed::http_get(&format!("{admin}/metrics")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("weir_transform_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    let n: usize = std::env::var("WEIR_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let run = format!("drain{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "draining a backlog of {n} QoS 1 messages of 300 B from a persistent session (one run)"
    );

    let (mqtt_rate, mqtt_taken_rate, _) = rt.block_on(raw_mqtt_drain(n, &run));
    let kafka_rate = raw_kafka(n, &run, false);
    raw_kafka(n, &run, true);

    let (rate, p99) = weir_leg(
        &rt,
        &run,
        (n, false),
        (mqtt_rate, mqtt_taken_rate, kafka_rate),
    );
    if std::env::var("WEIR_BENCH_EXACTLY_ONCE").is_ok_and(|v| v == "0") {
        return;
    }
    // The same with exactly once: a QoS 2 backlog, each batch a Kafka transaction.
    println!();
    println!("exactly once: the same with a QoS 2 backlog, each batch one Kafka transaction");
    let (eo_rate, eo_p99) = weir_leg(
        &rt,
        &format!("{run}eo"),
        (n, true),
        (mqtt_rate, mqtt_taken_rate, kafka_rate),
    );
    println!(
        "exactly once / at least once:  drain {:>5.2}   p99 arrival → PUBACK/PUBREC {:>5.2}",
        eo_rate / rate,
        eo_p99 / p99
    );
}

/// weir's drain of an `n`-message backlog (QoS 2 and `exactly_once` with `eo`), then its
/// latency at half that rate; prints the figures and ratios to the raw legs, and returns
/// (msg/s, p99 arrival to acknowledgement in seconds).
fn weir_leg(
    rt: &tokio::runtime::Runtime,
    run: &str,
    (n, eo): (usize, bool),
    (mqtt_rate, mqtt_taken_rate, kafka_rate): (f64, f64, f64),
) -> (f64, f64) {
    // weir's session: made by a first start, then the backlog published while it is away.
    let dir = tempfile::tempdir().unwrap();
    let mut config = bed::bench_config(run).replace(&format!("raw_topic = \"{run}.raw\"\n"), "");
    let in_flight = std::env::var("WEIR_BENCH_IN_FLIGHT").unwrap_or_else(|_| "5000".into());
    let session = format!(
        "max_in_flight = {in_flight}\n{}",
        if eo { "exactly_once = true\n" } else { "" }
    );
    config = config.replace("max_in_flight = 5000\n", &session);
    if let Ok(extra) = std::env::var("WEIR_BENCH_CONFIG") {
        config.push_str(&extra);
    }
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let weir = start_weir(&path);
    weir.connected
        .recv_timeout(Duration::from_secs(120))
        .expect("weir connects");
    let deadline = Instant::now() + Duration::from_secs(60);
    while bed::http_get(&format!("{}/readyz", weir.admin)).map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "weir subscribes");
        std::thread::sleep(Duration::from_millis(50));
    }
    weir.stop();
    rt.block_on(publish(&format!("{run}-pub"), (n, eo), None, |i| {
        format!("{run}/plant/1/thermostat/t-{}", i % 100)
    }));

    let weir = start_weir(&path);
    let (start, cpu_start, threads_start) = weir
        .connected
        .recv_timeout(Duration::from_secs(120))
        .expect("weir connects");
    let services_start = services_activity();
    let weir_start = bed::proc_activity(weir.child.id());
    let mut last = 0;
    let mut last_change = Instant::now();
    let end = loop {
        let a = weir.acked();
        if a >= n as u64 {
            break Instant::now();
        }
        if a != last {
            (last, last_change) = (a, Instant::now());
        }
        assert!(
            last_change.elapsed() < Duration::from_secs(120),
            "weir stopped draining at {a} of {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (cpu_end, peak_rss) = bed::proc_usage(weir.child.id());
    let threads_end = bed::threads_cpu(weir.child.id());
    let services_end = services_activity();
    let weir_end = bed::proc_activity(weir.child.id());
    let cpu = cpu_end - cpu_start;
    let elapsed = end - start;
    let rate = n as f64 / elapsed.as_secs_f64();
    let cpu_per = cpu * 1e6 / n as f64;
    println!(
        "weir drain (thermostat, Avro, acks after Kafka): {rate:>8.0} msg/s {cpu_per:>6.2} µs CPU/msg"
    );
    print_roles(&threads_start, &threads_end, cpu, n);
    if let (Some(start), Some(end)) = (weir_start, weir_end) {
        println!(
            "  {:<53} {}",
            "weir, whole process",
            start.per_message(&end, n)
        );
    }
    print_services(&services_start, &services_end, n);
    print_budget(cpu_per, (&services_start, &services_end), n, mqtt_rate);
    // Batches shape the transform's cost (a plugin call has a fixed part), and they depend
    // on how fast the stages around it run: a slower stage can change them.
    let calls = plugin_calls(&weir.admin);
    println!(
        "plugin calls (batches):                         {calls:>9} ({:.1} messages each)",
        n as f64 / calls.max(1) as f64
    );
    println!(
        "weir / raw MQTT drain:                          {:>9.2}",
        rate / mqtt_rate
    );
    println!(
        "  / until the broker took every ack:            {:>9.2}",
        rate / mqtt_taken_rate
    );
    println!(
        "weir / raw Kafka produce:                       {:>9.2}",
        rate / kafka_rate
    );
    println!(
        "weir peak RSS:                                  {:>9.1} MiB",
        peak_rss as f64 / (1 << 20) as f64
    );

    // Latency at half of the drain rate (or the rate asked for), for about five seconds.
    let half = std::env::var("WEIR_BENCH_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .unwrap_or(rate / 2.0);
    let m = (half * 5.0) as usize;
    let stages = ["ack", "handover", "produce", "kafka_answer"];
    let before = stages.map(|s| buckets(&weir.admin, s));
    let target = n as u64 + m as u64;
    // A plain producer writes beside weir while the paced messages flow, at a rate too low
    // to add load of its own: its answer times are the broker's under the same load, to
    // set against weir's Kafka leg.
    let beside = {
        let paced = Paced::new(run, "beside");
        let n = (BESIDE_RATE * m as f64 / half) as usize;
        std::thread::spawn(move || paced.run(n, BESIDE_RATE, 1))
    };
    rt.block_on(publish(&format!("{run}-lat"), (m, eo), Some(half), |i| {
        format!("{run}/plant/1/thermostat/t-{}", i % 100)
    }));
    let deadline = Instant::now() + Duration::from_secs(120);
    while weir.acked() < target {
        assert!(Instant::now() < deadline, "weir acks the paced messages");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = stages.map(|s| buckets(&weir.admin, s));
    println!(
        "arrival → PUBACK at {half:.0} msg/s:          p50 {:>6.2} ms  p99 {:>6.2} ms",
        bed::quantile(&before[0], &after[0], 0.5) * 1e3,
        bed::quantile(&before[0], &after[0], 0.99) * 1e3
    );
    println!(
        "  arrival → writes started:                  p50 {:>6.2} ms  p99 {:>6.2} ms",
        bed::quantile(&before[1], &after[1], 0.5) * 1e3,
        bed::quantile(&before[1], &after[1], 0.99) * 1e3
    );
    println!(
        "  writes started → Kafka's answer:           p50 {:>6.2} ms  p99 {:>6.2} ms",
        bed::quantile(&before[2], &after[2], 0.5) * 1e3,
        bed::quantile(&before[2], &after[2], 0.99) * 1e3
    );
    // A weir from before the histogram does not report it.
    if after[3].iter().any(|&(_, count)| count > 0.0) {
        println!(
            "    of which librdkafka and the broker:      p50 {:>6.2} ms  p99 {:>6.2} ms",
            bed::quantile(&before[3], &after[3], 0.5) * 1e3,
            bed::quantile(&before[3], &after[3], 0.99) * 1e3
        );
    }
    let (beside50, beside99) = beside.join().expect("the producer beside weir");
    println!(
        "  a plain producer's, beside weir ({BESIDE_RATE:.0} msg/s): p50 {:>6.2} ms  p99 {:>6.2} ms",
        beside50 * 1e3,
        beside99 * 1e3
    );
    let p99 = bed::quantile(&before[0], &after[0], 0.99);
    let (raw50, raw99) = raw_kafka_latency(m, half, run);
    println!(
        "raw producer, send → Kafka's answer, same rate: p50 {:>6.2} ms  p99 {:>6.2} ms",
        raw50 * 1e3,
        raw99 * 1e3
    );
    if eo {
        println!(
            "  last PUBREL forgotten (no transaction for 1 s): {:>6.1} s after the raw producer's run",
            weir.releases_done().as_secs_f64()
        );
    }
    print_idle(weir.child.id());
    weir.stop();
    let got = bed::count(
        &format!("{run}.thermostat"),
        n + m,
        Duration::from_secs(120),
    );
    assert_eq!(got, n + m, "every message reaches Kafka");
    (rate, p99)
}
