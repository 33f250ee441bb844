//! A device simulator and a read-back summary for the demo (`scripts/demo`).
//!
//! `cargo run -p weir --example devsim -- simulate [N]` publishes a mixed stream for the
//! example cohorts — thermostats (three firmware shapes), vehicles (batches of GPS fixes),
//! energy meters (binary frames) — with malformed, out-of-range and unroutable messages
//! mixed in, MQTT 5, QoS 1, to WEIR_MQTT_URL.
//!
//! `cargo run -p weir --example devsim -- summary SINCE_MS RECORDS QUARANTINED` reads the
//! example topics back (until the expected counts arrived)
//! from WEIR_KAFKA_BOOTSTRAP and prints records per cohort, quarantined messages per code,
//! and a few records decoded through the schema registry at WEIR_REGISTRY_URL.

use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("simulate") => simulate(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3000)),
        Some("summary") => {
            let num = |i: usize| args.get(i).and_then(|n| n.parse().ok()).unwrap_or(0);
            summary(num(1) as i64, (num(2), num(3)))
        }
        _ => {
            eprintln!("usage: devsim simulate [N] | devsim summary SINCE_MS RECORDS QUARANTINED");
            std::process::exit(2);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn simulate(n: u32) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    let url = env("WEIR_MQTT_URL", "mqtt://127.0.0.1:1883");
    let (host, port) = url
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .expect("mqtt://host:port");
    let mut o = rumqttc::v5::MqttOptions::new("weir-devsim", host, port.parse().expect("port"));
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 1000);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = acked.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("devsim: MQTT: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..n {
        let (kind, topic, payload, fw) = device_message(i, now);
        *counts.entry(kind).or_default() += 1;
        let props = PublishProperties {
            user_properties: vec![("fw".into(), fw.into())],
            content_type: None,
            ..Default::default()
        };
        client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            .await
            .expect("publish");
    }
    let start = Instant::now();
    while acked.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the broker did not acknowledge every publish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("published {n} messages (QoS 1, all acknowledged by the broker):");
    let mut records = 0;
    let mut quarantined = 0;
    for (k, c) in counts {
        println!("  {c:>6}  {k}");
        match k {
            "fleet" => records += 3 * c,
            k if k.starts_with("bad") => quarantined += c,
            _ => records += c,
        }
    }
    println!("expect records={records} quarantined={quarantined}");
}

/// Message `i` of the simulated fleet, sent at `now` (ms): what it is, its topic, payload
/// and firmware. One in five is bad on purpose.
fn device_message(i: u32, now: u64) -> (&'static str, String, Vec<u8>, &'static str) {
    match i % 20 {
            // Thermostats: three firmware generations.
            0..=2 => ("thermostat v1", format!("plant/7/thermostat/t-{}", i % 40),
                format!(r#"{{"ts":{},"temp_c":{:.1},"setpoint_c":21.0,"fw":"1.4.2"}}"#, now + u64::from(i), 18.0 + f64::from(i % 60) / 10.0).into_bytes(), "1.4.2"),
            3..=5 => ("thermostat v2", format!("plant/7/thermostat/t-{}", i % 40),
                format!(r#"{{"ts":{},"temperature":{{"value":{:.1},"unit":"F"}},"setpoint":{{"value":69.8,"unit":"F"}},"fw":"2.0.1"}}"#, now + u64::from(i), 64.0 + f64::from(i % 80) / 10.0).into_bytes(), "2.0.1"),
            6..=7 => ("thermostat v3", format!("plant/9/thermostat/t-{}", i % 40),
                format!(r#"{{"ts":{},"temperature":{{"value":{:.2},"unit":"C"}},"humidity":{{"value":{},"unit":"%"}},"fw":"3.1.0"}}"#, now + u64::from(i), 19.5 + f64::from(i % 7) / 4.0, 35 + i % 20).into_bytes(), "3.1.0"),
            // Vehicles: a batch of three fixes per message.
            8..=11 => {
                let (lat, lon) = (52.37 + f64::from(i % 100) / 1000.0, 4.89 + f64::from(i % 50) / 1000.0);
                ("fleet", format!("fleet/v-{}/gps", i % 25), format!(
                    r#"{{"positions":[{{"ts":{t},"lat":{lat:.5},"lon":{lon:.5},"speed_kmh":42.5,"heading":90}},{{"ts":{t1},"lat":{lat:.5},"lon":{lon2:.5},"speed_kmh":43}},{{"ts":{t2},"lat":{lat:.5},"lon":{lon3:.5}}}]}}"#,
                    t = now + u64::from(i), t1 = now + u64::from(i) + 1000, t2 = now + u64::from(i) + 2000,
                    lon2 = lon + 0.0002, lon3 = lon + 0.0004).into_bytes(), "5.2")
            }
            // Meters: binary frames.
            12..=15 => ("meter", format!("meters/m-{}/frame", i % 30),
                meter::encode_frame(4_000_000 + i % 30, now + u64::from(i), 1_000_000 + i * 7, u8::from(i.is_multiple_of(97))).to_vec(), "m1"),
            // The bad ones.
            16 => ("bad: malformed JSON", format!("plant/7/thermostat/t-{}", i % 40), b"{\"temp_c\": 21.5,".to_vec(), "1.4.2"),
            17 => ("bad: out of range", format!("plant/7/thermostat/t-{}", i % 40), format!(r#"{{"ts":{now},"temp_c":140.0}}"#).into_bytes(), "1.4.2"),
            18 => ("bad: corrupt frame", format!("meters/m-{}/frame", i % 30), {
                let mut f = meter::encode_frame(4_000_000, now, 5, 0);
                f[10] ^= 0xff;
                f.to_vec()
            }, "m1"),
            _ => ("bad: unroutable", format!("unrouted/sensor-{}/data", i % 5), b"{\"v\":1}".to_vec(), "0"),
        }
}

/// A record kept for display: key, value, headers.
type Sample = (Option<String>, Vec<u8>, HashMap<String, String>);

fn summary(since_ms: i64, expect: (u64, u64)) {
    let bootstrap = env("WEIR_KAFKA_BOOTSTRAP", "127.0.0.1:9092");
    let registry = env("WEIR_REGISTRY_URL", "http://127.0.0.1:8081");
    let consumer = reader(&bootstrap);
    let mut tally = Tally::default();
    // Read until weir has written everything the simulator expects (weir may still be
    // working through the broker's backlog), or give up after 90 s and say so.
    let start = Instant::now();
    while tally.records < expect.0 || tally.quarantined < expect.1 {
        if start.elapsed() > Duration::from_secs(90) {
            eprintln!(
                "devsim: after 90 s, {} of {} records and {} of {} quarantined arrived",
                tally.records, expect.0, tally.quarantined, expect.1
            );
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            tally.take(&m, since_ms);
        }
    }
    println!("\nrecords per cohort:");
    for (c, n) in &tally.per_cohort {
        println!("  {n:>6}  {c}");
    }
    println!("quarantined per code:");
    for (c, n) in &tally.per_code {
        println!("  {n:>6}  {c}");
    }
    let mut schemas: HashMap<u32, weir_core::avro::AvroSchema> = HashMap::new();
    for (topic, list) in &tally.samples {
        for (key, value, headers) in list {
            if topic == "weir.quarantine" {
                show_quarantined(topic, key, value, headers);
            } else {
                show_record(&registry, &mut schemas, (topic, key, value, headers));
            }
        }
    }
}

/// A consumer assigned every partition of the demo's topics, from the beginning.
fn reader(bootstrap: &str) -> BaseConsumer {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("devsim-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    let topics = [
        "telemetry.thermostat",
        "telemetry.fleet.position",
        "telemetry.meter",
        "weir.quarantine",
    ];
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            continue;
        };
        let Some(t) = md.topics().first() else {
            continue;
        };
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// What arrived: counts per cohort and per quarantine code, and a few samples per topic.
#[derive(Default)]
struct Tally {
    records: u64,
    quarantined: u64,
    per_cohort: BTreeMap<String, u64>,
    per_code: BTreeMap<String, u64>,
    samples: BTreeMap<String, Vec<Sample>>,
}

impl Tally {
    /// Count a record received by weir at or after `since_ms`; keep two per topic and one
    /// quarantine entry per code as samples.
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>, since_ms: i64) {
        let headers: HashMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let received: i64 = headers
            .get("weir.received_at")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if received < since_ms {
            return;
        }
        let topic = m.topic().to_owned();
        let label = |k: &str| headers.get(k).cloned().unwrap_or_default();
        if topic == "weir.quarantine" {
            self.quarantined += 1;
            *self.per_code.entry(label("weir.error.code")).or_default() += 1;
        } else {
            self.records += 1;
            *self.per_cohort.entry(label("weir.cohort")).or_default() += 1;
        }
        let code = headers.get("weir.error.code").cloned();
        let s = self.samples.entry(topic).or_default();
        let wanted = match &code {
            Some(c) => !s
                .iter()
                .any(|(_, _, h)| h.get("weir.error.code") == Some(c)),
            None => s.len() < 2,
        };
        if wanted {
            s.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
}

/// A quarantine entry: its stage, code, message and the original payload.
fn show_quarantined(
    topic: &str,
    key: &Option<String>,
    value: &[u8],
    headers: &HashMap<String, String>,
) {
    println!(
        "\n{topic}  key={key:?}\n  {} {}: {}\n  original payload: {}",
        headers.get("weir.error.stage").map_or("", String::as_str),
        headers.get("weir.error.code").map_or("", String::as_str),
        headers.get("weir.error.message").map_or("", String::as_str),
        match std::str::from_utf8(value) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!(
                "0x{}",
                value.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        }
    );
}

/// A governed record, decoded with its schema from the registry.
fn show_record(
    registry: &str,
    schemas: &mut HashMap<u32, weir_core::avro::AvroSchema>,
    (topic, key, value, headers): (&str, &Option<String>, &[u8], &HashMap<String, String>),
) {
    let Some((id, datum)) = weir_core::frame::unframe(value) else {
        return;
    };
    let schema = schemas.entry(id).or_insert_with(|| {
        let v: serde_json::Value = reqwest::blocking::get(format!("{registry}/schemas/ids/{id}"))
            .expect("registry")
            .json()
            .expect("JSON");
        weir_core::avro::AvroSchema::parse(v["schema"].as_str().unwrap_or_default())
            .expect("schema")
    });
    println!(
        "\n{topic}  key={key:?}  schema id {id}  {}  sha256 {}…\n  {}",
        headers.get("weir.plugin").map_or("", String::as_str),
        headers
            .get("weir.plugin.sha256")
            .map_or("", |s| &s[..12.min(s.len())]),
        schema
            .decode_to_json(datum)
            .map(|v| v.to_string())
            .unwrap_or_else(|e| e.to_string())
    );
}
