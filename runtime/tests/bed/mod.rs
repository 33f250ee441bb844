//! Helpers for tests against the real test bed (`scripts/testbed up`): mosquitto, a
//! Kafka-protocol broker and weir's registry. Addresses come from WEIR_MQTT_URL,
//! WEIR_KAFKA_BOOTSTRAP and WEIR_REGISTRY_URL, with the test bed's loopback defaults.

#![allow(dead_code)]

use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn mqtt_url() -> String {
    std::env::var("WEIR_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}
pub fn kafka() -> String {
    std::env::var("WEIR_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}
pub fn registry() -> String {
    std::env::var("WEIR_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn plugins_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("plugins")
}

/// A unique prefix for this test's topics and client ids.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}{}x{}", std::process::id(), nanos % 1_000_000_000)
}

/// The standard config for a test: the three example cohorts plus an adversarial one, all
/// under `p/` topics, Kafka topics under `p.`.
pub fn config(p: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{mqtt}"
client_id = "{p}-weir"
subscriptions = ["{p}/#"]
max_in_flight = 500
keep_alive_s = 10
[kafka]
bootstrap = "{kafka}"
[registry]
url = "{registry}"
[output]
quarantine_topic = "{p}.quarantine"
[admin]
listen = "127.0.0.1:0"
[plugins]
dir = "{dir}"
control_topic = "{p}.control"
signing_key_file = "{key}"
[[cohort]]
name = "thermostats"
topic = "{p}/plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "{p}.thermostat"
key = "{{topic[4]}}"
[[cohort]]
name = "fleet"
topic = "{p}/fleet/+/gps"
plugin = "fleet-gps@1.0.0"
output_topic = "{p}.fleet"
key = "{{topic[2]}}"
[[cohort]]
name = "meters"
topic = "{p}/meters/+/frame"
plugin = "meter@1.0.0"
output_topic = "{p}.meter"
key = "m-{{field.meter_id}}"
[[cohort]]
name = "chaos"
topic = "{p}/chaos/#"
plugin = "adversarial@0.1.0"
output_topic = "{p}.chaos"
"#,
        mqtt = mqtt_url(),
        kafka = kafka(),
        registry = registry(),
        dir = plugins_dir().display(),
        key = signing_key().display(),
    )
}

/// Wait until `done` holds, checking every 50 ms: the one way the tests wait on a condition
/// (never a fixed sleep). `what` names the condition and `context` (the log, the metrics)
/// explains a timeout.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The control-topic signing key every weir process of the tests shares, as the processes
/// of one deployment do (each test's processes have stores of their own).
pub fn signing_key() -> PathBuf {
    plugins_dir().with_file_name("test-signing.key")
}

/// The benchmarks' config: one thermostat cohort under `run/`, raw capture on, batches of
/// 100, a window of 5,000 messages, the admin listener on a free port.
pub fn bench_config(run: &str) -> String {
    format!(
        r#"[mqtt]
url = "{mqtt}"
client_id = "{run}-weir"
subscriptions = ["{run}/plant/#"]
max_in_flight = 5000
[kafka]
bootstrap = "{kafka}"
[registry]
url = "{registry}"
[output]
quarantine_topic = "{run}.quarantine"
raw_topic = "{run}.raw"
batch_size = 100
[admin]
listen = "127.0.0.1:0"
[plugins]
dir = "{dir}"
control_topic = "{run}.control"
[[cohort]]
name = "thermostats"
topic = "{run}/plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "{run}.thermostat"
key = "{{topic[4]}}"
"#,
        mqtt = mqtt_url(),
        kafka = kafka(),
        registry = registry(),
        dir = plugins_dir().display(),
    )
}

/// The benchmarks' raw Kafka legs: a plain producer with weir's guarantees (idempotent,
/// acks=all) and its linger, nothing else.
pub fn raw_producer_config() -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", kafka())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    c
}

/// A running `weir run`.
/// How long weir may take to start (its admin listener open, then ready).
const STARTUP: Duration = Duration::from_secs(60);

pub struct Weir {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    /// Its admin listener, `http://host:port`.
    pub admin: String,
    dir: tempfile::TempDir,
}

/// GET `url`; the status and body, or `None` if nothing answered.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = client.get(url).send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().unwrap_or_default()))
}

impl Weir {
    /// Start weir on `config` (extra env applied) and wait until `/readyz` says ready.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_at(dir, &path, env)
    }

    /// Start weir on `config` and return once its admin listener is open, ready or not.
    pub fn launch(config: &str, env: &[(&str, &str)]) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn_at(dir, &path, env, STARTUP)
    }

    /// As [`Weir::start`], allowing `within` for start-up: for a plugin directory with
    /// interpreter components, each of which takes many seconds to compile at start-up.
    pub fn start_within(config: &str, env: &[(&str, &str)], within: Duration) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, config).unwrap();
        let weir = Self::spawn_at(dir, &path, env, within);
        weir.wait_ready(within);
        weir
    }

    fn start_at(dir: tempfile::TempDir, path: &Path, env: &[(&str, &str)]) -> Weir {
        let weir = Self::spawn_at(dir, path, env, STARTUP);
        weir.wait_ready(STARTUP);
        weir
    }

    fn spawn_at(
        dir: tempfile::TempDir,
        path: &Path,
        env: &[(&str, &str)],
        within: Duration,
    ) -> Weir {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["run", "--config"])
            .arg(path)
            .env("WEIR_LOG", "info")
            .env("WEIR_NO_CACHE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("admin listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(admin) = rx.recv_timeout(within) else {
            let _ = child.kill();
            panic!(
                "weir did not open its admin listener within {within:?}; its log:\n{}",
                log.lock().unwrap()
            );
        };
        Weir {
            child,
            log,
            admin,
            dir,
        }
    }

    /// Wait until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = http_get(&format!("{}/readyz", self.admin)) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "weir not ready within {timeout:?}: {:?}; its log:\n{}",
                http_get(&format!("{}/readyz", self.admin)),
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.admin))
            .expect("weir's admin listener answers")
            .1
    }

    /// Peak resident memory so far (VmHWM), bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    /// Send SIGTERM without waiting.
    pub fn sigterm(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Wait for the process to exit, at most `timeout`; the status and the log.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > timeout {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }

    /// SIGKILL.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Start again on the same config and return once its admin listener is open, ready
    /// or not.
    pub fn relaunch(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Weir {
        let path = dir.path().join("weir.toml");
        Self::spawn_at(dir, &path, env, STARTUP)
    }

    /// SIGTERM (weir drains and disconnects), wait; its directory, to start it again.
    pub fn terminate(mut self) -> tempfile::TempDir {
        self.sigterm();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.log.lock().unwrap());
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Start again on the same config (same client id: the session resumes).
    pub fn restart(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Weir {
        let path = dir.path().join("weir.toml");
        Self::start_at(dir, &path, env)
    }

    /// SIGTERM and wait; returns the exit status and the log.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT 5 publisher (QoS 1) that waits for every PUBACK.
pub struct Publisher {
    rt: tokio::runtime::Runtime,
    client: rumqttc::v5::AsyncClient,
    acked: Arc<std::sync::atomic::AtomicUsize>,
    sent: usize,
    qos: rumqttc::v5::mqttbytes::QoS,
}

impl Publisher {
    pub fn new(id: &str) -> Publisher {
        Self::at(&mqtt_url(), id)
    }

    /// A publisher to the broker at `url` (`mqtt://host:port`).
    pub fn at(url: &str, id: &str) -> Publisher {
        Self::at_qos(url, id, 1)
    }

    /// A publisher at QoS `qos` (1 or 2): a message counts as acknowledged at its PUBACK,
    /// or at QoS 2 its PUBCOMP.
    pub fn at_qos(url: &str, id: &str, qos: u8) -> Publisher {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let hp = url.trim_start_matches("mqtt://");
        let (host, port) = hp.rsplit_once(':').unwrap();
        let mut o = rumqttc::v5::MqttOptions::new(id, host, port.parse().unwrap());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(64 << 20));
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 1000);
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = acked.clone();
        rt.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)
                        | rumqttc::v5::mqttbytes::v5::Packet::PubComp(_),
                    )) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            rt,
            client,
            acked,
            sent: 0,
            qos: if qos == 2 {
                rumqttc::v5::mqttbytes::QoS::ExactlyOnce
            } else {
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce
            },
        }
    }

    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, props: &[(&str, &str)]) {
        self.publish_opts(topic, payload.into(), props, false);
    }

    pub fn publish_opts(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        props: &[(&str, &str)],
        retain: bool,
    ) {
        let client = self.client.clone();
        let topic = topic.to_owned();
        let props: Vec<(String, String)> = props
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let qos = self.qos;
        self.rt.block_on(async move {
            if props.is_empty() {
                client.publish(topic, qos, retain, payload).await.unwrap();
            } else {
                let p = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    user_properties: props,
                    ..Default::default()
                };
                client
                    .publish_with_properties(topic, qos, retain, payload, p)
                    .await
                    .unwrap();
            }
        });
        self.sent += 1;
    }

    /// Wait until the broker acknowledged everything published.
    pub fn flush(&self) {
        let start = Instant::now();
        while self.acked.load(std::sync::atomic::Ordering::SeqCst) < self.sent {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "broker acked {} of {}",
                self.acked.load(std::sync::atomic::Ordering::SeqCst),
                self.sent
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One consumed Kafka record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Rec {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no header {name}: {:?}", self.headers))
    }
}

/// A consumer assigned every partition of `topic` from the beginning (no consumer group
/// rebalance to wait for); `None` if the topic did not appear within `timeout`.
pub fn assigned_consumer(topic: &str, timeout: Duration) -> Option<BaseConsumer> {
    assigned_consumer_with(topic, timeout, &[])
}

/// As [`assigned_consumer`], with client properties `extra` (another broker, security).
pub fn assigned_consumer_with(
    topic: &str,
    timeout: Duration,
    extra: &[(&str, &str)],
) -> Option<BaseConsumer> {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", kafka())
        .set("group.id", unique("g"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let start = Instant::now();
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            && let Some(t) = md.topics().first()
            && !t.partitions().is_empty()
            && t.error().is_none()
        {
            break t.partitions().len();
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    Some(consumer)
}

/// Count records on `topic` until `n` arrived or `timeout` passed.
pub fn count(topic: &str, n: usize, timeout: Duration) -> usize {
    count_with(topic, n, timeout, &[])
}

/// As [`count`], with client properties `extra`.
pub fn count_with(topic: &str, n: usize, timeout: Duration, extra: &[(&str, &str)]) -> usize {
    let start = Instant::now();
    let Some(consumer) = assigned_consumer_with(topic, timeout, extra) else {
        return 0;
    };
    let mut got = 0;
    while got < n && start.elapsed() < timeout {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            got += 1;
        }
    }
    got
}

/// Read `topic` from the beginning until `want` records arrived and no more came for
/// `settle`, or `timeout` passed.
pub fn consume(topic: &str, want: usize, timeout: Duration, settle: Duration) -> Vec<Rec> {
    consume_with(topic, want, timeout, settle, &[])
}

/// As [`consume`], with client properties `extra` (another broker, security).
pub fn consume_with(
    topic: &str,
    want: usize,
    timeout: Duration,
    settle: Duration,
    extra: &[(&str, &str)],
) -> Vec<Rec> {
    let start = Instant::now();
    let Some(consumer) = assigned_consumer_with(topic, timeout, extra) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut last = Instant::now();
    while start.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Rec {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {
                if out.len() >= want && last.elapsed() >= settle {
                    break;
                }
            }
        }
    }
    out
}

/// Decode a Confluent wire-format value through the registry.
pub struct Decoder {
    schemas: HashMap<u32, weir_core::avro::AvroSchema>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            schemas: HashMap::new(),
        }
    }

    pub fn decode(&mut self, value: &[u8]) -> serde_json::Value {
        let (id, datum) = weir_core::frame::unframe(value).expect("Confluent wire format");
        let schema = self.schemas.entry(id).or_insert_with(|| {
            let v: serde_json::Value =
                reqwest::blocking::get(format!("{}/schemas/ids/{id}", registry()))
                    .unwrap()
                    .json()
                    .unwrap();
            weir_core::avro::AvroSchema::parse(v["schema"].as_str().unwrap()).unwrap()
        });
        schema.decode_to_json(datum).unwrap()
    }
}

/// Build a meter frame (same layout as the meter plugin).
pub fn meter_frame(id: u32, ts: u64, wh: u32, flags: u8) -> Vec<u8> {
    meter::encode_frame(id, ts, wh, flags).to_vec()
}

/// How many times each `ts_ms` occurs among thermostat records (tests put a message's
/// sequence number there, so missing keys are lost messages and counts above 1 duplicates).
pub fn ts_counts(records: &[Rec]) -> HashMap<i64, usize> {
    let mut decoder = Decoder::new();
    let mut seen = HashMap::new();
    for r in records {
        *seen
            .entry(decoder.decode(&r.value)["ts_ms"].as_i64().unwrap())
            .or_default() += 1;
    }
    seen
}

/// Run `weir run` on `config` expecting it to fail at start-up; its stderr.
pub fn start_fails(config: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("WEIR_NO_CACHE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "weir started: {err}");
            return err;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("weir did not stop at start-up within 60 s; its log:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A v5 or 3.1.1 publisher that can also set the retain flag.
pub fn publish_retained(id: &str, topic: &str, payload: &[u8]) {
    let mut p = Publisher::new(id);
    p.publish_opts(topic, payload.to_vec(), &[], true);
    p.flush();
}

/// Every record on each of `topics` (from the beginning), read until `want` in all arrived
/// and nothing more came for `settle`.
pub fn consume_all(
    topics: &[String],
    want: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Rec> {
    let start = Instant::now();
    let mut out = Vec::new();
    for t in topics {
        let left = timeout.saturating_sub(start.elapsed());
        out.extend(consume(t, 0, left.max(Duration::from_secs(5)), settle));
        if out.len() >= want {
            break;
        }
    }
    out
}

/// Parse OpenMetrics text with the Python reference parser (prometheus_client), returning
/// `{sample name{labels}: value}` as JSON.
pub fn parse_metrics(text: &str) -> serde_json::Value {
    let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused weir's /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The benchmarks' message `i`: a thermostat reading of 100 devices, padded to 300 bytes.
pub fn bench_payload(i: usize) -> Vec<u8> {
    let p = format!(
        r#"{{"device":"t-{d}","ts":{ts},"temperature":{{"value":{v:.1},"unit":"F"}},"setpoint":{{"value":68.0,"unit":"F"}},"humidity":{{"value":41.5,"unit":"%"}},"fw":"3.1.0","site":"plant-7","line":"line-2","model":"TX-300","rssi":-61,"uptime_s":{i},"battery":{{"value":3.61,"unit":"V"}}}}"#,
        d = i % 100,
        ts = 1_700_000_000_000u64 + i as u64,
        v = 60.0 + (i % 20) as f64
    );
    format!("{p:<300}").into_bytes()
}

/// (user+system CPU seconds, peak RSS bytes) of a process, from /proc.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let cpu = stat_fields(&stat)
        .and_then(|(_, f)| cpu_seconds(&f))
        .unwrap_or_else(|| panic!("/proc/{pid}/stat has no CPU times: {stat:?}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (cpu, hwm * 1024)
}

/// What a process has done so far, from /proc: for telling apart what a message costs in
/// CPU, in system calls and in wake-ups.
#[derive(Clone, Copy, Debug, Default)]
pub struct Activity {
    /// User+system CPU seconds.
    pub cpu: f64,
    /// Read and write system calls (`syscr` + `syscw` of `/proc/<pid>/io`: read, write and
    /// their vectored forms, which is how mosquitto and the JVM use their sockets).
    pub reads_writes: u64,
    /// Context switches of all its threads, voluntary (a wait: each one a later wake-up)
    /// and not.
    pub switches: u64,
}

/// A process's [`Activity`] so far, or `None` when it is not there to read.
pub fn proc_activity(pid: u32) -> Option<Activity> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu = stat_fields(&stat).and_then(|(_, f)| cpu_seconds(&f))?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let reads_writes = field(&io, "syscr:") + field(&io, "syscw:");
    let switches = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|s| field(&s, "voluntary_ctxt_switches:") + field(&s, "nonvoluntary_ctxt_switches:"))
        .sum();
    Some(Activity {
        cpu,
        reads_writes,
        switches,
    })
}

impl Activity {
    /// One line: what was done between `self` and `later`, per message.
    pub fn per_message(&self, later: &Activity, n: usize) -> String {
        let n = n.max(1) as f64;
        format!(
            "{:>6.2} µs/msg {:>6.3} reads+writes/msg {:>6.3} switches/msg",
            (later.cpu - self.cpu) * 1e6 / n,
            later.reads_writes.saturating_sub(self.reads_writes) as f64 / n,
            later.switches.saturating_sub(self.switches) as f64 / n,
        )
    }
}

/// A `/proc/.../stat` line split at its name: the name (in parentheses, and free to hold
/// spaces and parentheses itself) and the fields after it.
fn stat_fields(stat: &str) -> Option<(&str, Vec<&str>)> {
    let (head, rest) = stat.rsplit_once(')')?;
    Some((head.split_once('(')?.1, rest.split_whitespace().collect()))
}

/// CPU seconds (user + system) from the fields after the name: utime and stime, the 14th
/// and 15th of the line, in ticks of USER_HZ (100 on Linux).
fn cpu_seconds(fields: &[&str]) -> Option<f64> {
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// CPU seconds (user + system) of each live thread of process `pid`, by thread id, with
/// the thread's name.
pub fn threads_cpu(pid: u32) -> HashMap<u32, (String, f64)> {
    per_thread(pid, |task| {
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        let (name, fields) = stat_fields(&stat)?;
        Some((name.to_owned(), cpu_seconds(&fields)?))
    })
}

/// Voluntary context switches (waits that ended) of each live thread of process `pid`, by
/// thread id, with the thread's name.
pub fn threads_woken(pid: u32) -> HashMap<u32, (String, u64)> {
    per_thread(pid, |task| {
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
        let name = field("Name:")?.trim().to_owned();
        Some((
            name,
            field("voluntary_ctxt_switches:")?.trim().parse().ok()?,
        ))
    })
}

/// `read` of each live thread of process `pid` (its `/proc/<pid>/task/<tid>` directory), by
/// thread id; threads it reads nothing of are left out.
fn per_thread<T>(
    pid: u32,
    read: impl Fn(&std::path::Path) -> Option<(String, T)>,
) -> HashMap<u32, (String, T)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((tid, read(&task.path())?))
        })
        .collect()
}

/// Every thread of process `pid`: (name, nice value).
pub fn thread_nice(pid: u32) -> Vec<(String, i32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (name, fields) = stat_fields(&stat)?;
            // nice: the 19th field of the line.
            Some((name.to_owned(), fields.get(16)?.parse().ok()?))
        })
        .collect()
}

/// Cumulative buckets of histogram `name` whose labels, besides `le`, are exactly
/// `labels` (as written in the exposition, e.g. `group="a"`; empty for none): (upper
/// bound, count).
pub fn buckets(text: &str, name: &str, labels: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (set, count) = l.split_once("} ")?;
            let mut le = None;
            let mut rest = Vec::new();
            for kv in set.split(',') {
                match kv.strip_prefix("le=") {
                    Some(v) => le = Some(v.trim_matches('"')),
                    None => rest.push(kv),
                }
            }
            if rest.join(",") != labels {
                return None;
            }
            let le = match le? {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The q-quantile of the observations between two bucket snapshots (linear within a
/// bucket, as Prometheus's `histogram_quantile`).
pub fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = counts.last().map_or(0.0, |c| c.1);
    let want = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, c) in &counts {
        if c >= want {
            if le.is_infinite() {
                return lower.0;
            }
            let span = (c - lower.1).max(1.0);
            return lower.0 + (le - lower.0) * ((want - lower.1) / span);
        }
        lower = (le, c);
    }
    lower.0
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An Apache Kafka node of the test's own (KRaft, broker and controller in one process),
/// run by `scripts/testbed kafka-node`; killed when dropped. Its log is `node-<id>.log` in
/// its folder.
pub struct KafkaNode {
    child: Option<Child>,
    pub id: u32,
    /// The client listener (PLAINTEXT unless `extra` says otherwise).
    pub port: u16,
    pub controller_port: u16,
    voters: String,
    dir: PathBuf,
    extra: Option<PathBuf>,
    scram: String,
    /// How many times it was started in its folder (its log keeps every start).
    spawned: usize,
}

impl KafkaNode {
    /// One node alone in `dir`; `extra` is added to its server.properties (`{port}`,
    /// `{controller_port}` and `{dir}` are replaced); `scram` lists SCRAM users to create when its storage is
    /// formatted (`SCRAM-SHA-256=[name=u,password=p]`).
    pub fn single(dir: &Path, extra: &str, scram: &[&str]) -> KafkaNode {
        let (port, controller_port) = (free_port(), free_port());
        let voters = format!("1@127.0.0.1:{controller_port}");
        let mut node = Self::new(dir, 1, port, controller_port, voters, extra, scram);
        node.spawn();
        node.wait_started(Duration::from_secs(90));
        node
    }

    fn new(
        dir: &Path,
        id: u32,
        port: u16,
        controller_port: u16,
        voters: String,
        extra: &str,
        scram: &[&str],
    ) -> KafkaNode {
        let dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let extra = (!extra.is_empty()).then(|| {
            let path = dir.join("extra.properties");
            let text = extra
                .replace("{port}", &port.to_string())
                .replace("{controller_port}", &controller_port.to_string())
                .replace("{dir}", &dir.display().to_string());
            std::fs::write(&path, text).unwrap();
            path
        });
        KafkaNode {
            child: None,
            id,
            port,
            controller_port,
            voters,
            dir,
            extra,
            scram: scram.join(";"),
            spawned: 0,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("node-{}.log", self.id))
    }

    fn starts_logged(&self) -> usize {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .matches("Kafka Server started")
            .count()
    }

    /// Start the process (storage is formatted the first time).
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(root().join("scripts/testbed"));
        cmd.arg("kafka-node")
            .arg(&self.dir)
            .arg(self.id.to_string())
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .arg(&self.voters);
        if let Some(extra) = &self.extra {
            cmd.arg(extra);
        }
        let child = cmd
            .env("WEIR_TESTBED_KAFKA_SCRAM", &self.scram)
            .env("WEIR_TESTBED_KAFKA_HEAP", "-Xms128m -Xmx512m")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("scripts/testbed kafka-node runs");
        self.child = Some(child);
        self.spawned += 1;
    }

    /// Wait until the node says it started (as often as it was spawned).
    fn wait_started(&mut self, timeout: Duration) {
        let want = self.spawned;
        let start = Instant::now();
        while self.starts_logged() < want {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().unwrap()) {
                panic!(
                    "Kafka node {} exited ({status}); its log:\n{}",
                    self.id,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "Kafka node {} did not start within {timeout:?}; its log:\n{}",
                self.id,
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the node is gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the controlled shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-TERM");
            let start = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Start again on the same folder and ports; returns once it serves.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_started(Duration::from_secs(90));
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send `sig` (`-TERM`, `-STOP`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// A Kafka cluster of the test's own: `n` KRaft nodes, each broker and controller, on
/// loopback ports; `extra` is added to every node's server.properties.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
    _dir: tempfile::TempDir,
}

impl KafkaCluster {
    pub fn start(n: u32, extra: &str) -> KafkaCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<KafkaNode> = ports
            .iter()
            .enumerate()
            .map(|(i, (p, c))| {
                KafkaNode::new(dir.path(), i as u32 + 1, *p, *c, voters.clone(), extra, &[])
            })
            .collect();
        // All at once: each waits for a quorum of controllers before it serves.
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_started(Duration::from_secs(120));
        }
        KafkaCluster { nodes, _dir: dir }
    }

    /// Every node's client listener.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaNode::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node with `id`.
    pub fn node(&mut self, id: u32) -> &mut KafkaNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }
}

/// Run one of Kafka's own tools (`org.apache.kafka.tools.ConfigCommand`, `...AclCommand`)
/// with `args`; its output, or a panic with it when it fails.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/testbed"))
        .arg("kafka-tool")
        .arg(class)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{class} {args:?}: {text}");
    text
}

/// The leader of partition `partition` of `topic` on the cluster at `bootstrap`, as its
/// node id; `None` while it has none.
pub fn partition_leader(bootstrap: &str, topic: &str, partition: i32) -> Option<u32> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().first()?;
    let p = t.partitions().iter().find(|p| p.id() == partition)?;
    (p.error().is_none() && p.leader() >= 0).then(|| p.leader() as u32)
}

/// Create `topics` with one partition each on the broker at `bootstrap` (a topic that
/// exists is left as it is).
pub fn create_topics(bootstrap: &str, topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A broker that has just started may answer its first requests with an error; ask
    // again for a while.
    let start = Instant::now();
    loop {
        let results = rt
            .block_on(admin.create_topics(&new, &AdminOptions::new()))
            .unwrap();
        let failed: Vec<(String, rdkafka::types::RDKafkaErrorCode)> = results
            .into_iter()
            .filter_map(Result::err)
            .filter(|(_, e)| *e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)
            .collect();
        if failed.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "creating topics: {failed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Create `topic` (one partition, one replica) with topic `configs` on the broker at
/// `bootstrap`.
pub fn create_topic_with(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|e| panic!("creating {topic}: {e:?}"));
    }
}

/// Set topic `configs` of an existing `topic` on the broker at `bootstrap`.
/// Set `configs` on `topic`. Kafka's AlterConfigs replaces a topic's whole set: a setting
/// not named here goes back to the broker's default.
pub fn alter_topic(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.alter_configs(&[alter], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap_or_else(|e| panic!("altering {topic}: {e:?}"));
    }
}

/// The end offset of partition 0 of `topic` on the broker at `bootstrap`.
pub fn end_offset(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("offsets"))
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

/// Publishes thermostat readings (firmware v1, `ts` = a per-device sequence) to `devices`
/// devices until stopped; returns how many per device.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Messages published so far.
    pub sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<usize>,
}

impl Load {
    pub fn start(p: &str, id: &str, devices: usize) -> Load {
        Load::start_from(p, id, devices, 0)
    }

    /// As [`Load::start`], with readings numbered from `first` (a second load on the same
    /// devices after an earlier one).
    pub fn start_from(p: &str, id: &str, devices: usize, first: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (stop_c, sent_c, p, id) = (stop.clone(), sent.clone(), p.to_owned(), id.to_owned());
        let thread = std::thread::spawn(move || {
            let mut publisher = Publisher::new(&id);
            let mut rounds = first;
            while !stop_c.load(Ordering::Relaxed) {
                for d in 0..devices {
                    publisher.publish(
                        &format!("{p}/plant/1/thermostat/d{d}"),
                        format!(r#"{{"ts":{rounds},"temp_c":20.5}}"#),
                        &[],
                    );
                    sent_c.fetch_add(1, Ordering::Relaxed);
                }
                rounds += 1;
                if rounds.is_multiple_of(20) {
                    publisher.flush();
                }
            }
            publisher.flush();
            rounds
        });
        Load { stop, sent, thread }
    }

    pub fn wait_sent(&self, n: usize) {
        let start = Instant::now();
        while self.sent.load(Ordering::Relaxed) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "publisher stalled"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }

    /// Publish `more` messages, stop, and read back every record of `p`'s thermostat
    /// topic; the rounds each device published (counting from 0, whatever the load's
    /// first), and the records.
    pub fn finish_after(self, more: usize, p: &str, devices: usize) -> (usize, Vec<Rec>) {
        self.wait_sent(self.sent.load(Ordering::Relaxed) + more);
        let rounds = self.finish();
        let records = consume(
            &format!("{p}.thermostat"),
            rounds * devices,
            Duration::from_secs(120),
            Duration::from_secs(2),
        );
        (rounds, records)
    }
}

/// How many records each (device, reading) has.
pub fn readings(records: &[Rec]) -> HashMap<(String, i64), usize> {
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    let mut decoder = Decoder::new();
    for r in records {
        let v = decoder.decode(&r.value);
        *seen
            .entry((
                v["device_id"].as_str().unwrap().to_owned(),
                v["ts_ms"].as_i64().unwrap(),
            ))
            .or_default() += 1;
    }
    seen
}
