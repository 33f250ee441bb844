//! End to end through `weir run` against the test bed, and the raw legs on the same
//! services in the same run: N QoS 1 messages of ~300 B JSON (default 200,000).
//!
//! - raw MQTT: a plain rumqttc subscriber's receive rate for the publisher's stream;
//! - raw Kafka: a plain rdkafka producer (idempotent, acks=all) writing the same bytes;
//! - weir: publish → weir → Kafka, timed from the first publish to the last record read
//!   back; weir's CPU time (utime+stime from /proc) per message and its peak RSS;
//! - replay: `weir replay --from <raw capture> --to <topic>` over the same messages, timed
//!   from start to exit, against the live rate; and without its start-up (timed as a
//!   one-message replay), which is what the live figure leaves out too.
//!
//! Run: `scripts/bench-pipeline` (brings the bed up with in-memory Kafka storage).

use rdkafka::producer::{FutureProducer, FutureRecord};
#[path = "../tests/bed/mod.rs"]
mod bed;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn mqtt_options(id: &str) -> rumqttc::v5::MqttOptions {
    let url = env("WEIR_MQTT_URL", "mqtt://127.0.0.1:1883");
    let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let mut o = rumqttc::v5::MqttOptions::new(id, host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(60));
    o
}

/// Publish `n` messages to `topic(i)` at full speed (QoS 1) and wait for every PUBACK.
async fn publish(id: &str, n: usize, topic: impl Fn(usize) -> String) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(mqtt_options(id), 10_000);
    let acked = Arc::new(AtomicUsize::new(0));
    let counter = acked.clone();
    let task = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < n {
            if let Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(_))) = eventloop.poll().await {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for i in 0..n {
        client
            .publish(
                topic(i),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                bed::bench_payload(i),
            )
            .await
            .unwrap();
    }
    task.await.unwrap();
}

async fn raw_mqtt(n: usize, run: &str) -> f64 {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let (sub, mut eventloop) =
        rumqttc::v5::AsyncClient::new(mqtt_options(&format!("{run}-rawsub")), 10_000);
    let filter = format!("{run}/raw/#");
    sub.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        let mut first = None;
        while got < n {
            if let Ok(rumqttc::v5::Event::Incoming(Packet::Publish(_))) = eventloop.poll().await {
                first.get_or_insert_with(Instant::now);
                got += 1;
            }
        }
        first.unwrap().elapsed()
    });
    let start = Instant::now();
    publish(&format!("{run}-rawpub"), n, |i| {
        format!("{run}/raw/t-{}", i % 100)
    })
    .await;
    let _ = receiver.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

async fn raw_kafka(n: usize, run: &str) -> f64 {
    let producer: FutureProducer = bed::raw_producer_config().create().unwrap();
    // Not the raw-capture topic: replay reads that one.
    let topic = format!("{run}.rawkafka");
    bed::create_topics(&bed::kafka(), &[&topic]);
    let start = Instant::now();
    let mut futures = Vec::with_capacity(n);
    for i in 0..n {
        let p = bed::bench_payload(i);
        let key = format!("t-{}", i % 100);
        loop {
            match producer.send_result(FutureRecord::to(&topic).payload(&p).key(&key)) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    for f in futures {
        f.await.unwrap().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = env("WEIR_BENCH_MESSAGES", "200000").parse().unwrap();
    let run = format!("bench{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("{n} QoS 1 messages of 300 B through the test bed (2 shared cores; one run)");

    let mqtt_rate = rt.block_on(raw_mqtt(n, &run));
    println!("raw MQTT leg (publish → plain subscriber):      {mqtt_rate:>9.0} msg/s");
    let kafka_rate = rt.block_on(raw_kafka(n, &run));
    println!("raw Kafka leg (plain idempotent producer):      {kafka_rate:>9.0} msg/s");

    let dir = tempfile::tempdir().unwrap();
    let config = bed::bench_config(&run);
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config"])
        .arg(&path)
        .env("WEIR_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(weir.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("MQTT subscriptions acknowledged") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let pid = weir.id();
    let (cpu_before, _) = bed::proc_usage(pid);
    let start = Instant::now();
    let topic = format!("{run}.thermostat");
    let counter = {
        let topic = topic.clone();
        std::thread::spawn(move || bed::count(&topic, n, Duration::from_secs(900)))
    };
    rt.block_on(publish(&format!("{run}-pub"), n, |i| {
        format!("{run}/plant/1/thermostat/t-{}", i % 100)
    }));
    let got = counter.join().unwrap();
    let elapsed = start.elapsed();
    let (cpu_after, peak_rss) = bed::proc_usage(pid);
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    weir.wait().unwrap();
    assert_eq!(got, n, "every message must arrive");
    let e2e = n as f64 / elapsed.as_secs_f64();
    let slower = mqtt_rate.min(kafka_rate);
    println!("weir end to end (publish → weir → Kafka):       {e2e:>9.0} msg/s");
    println!(
        "ratio to the slower raw leg:                    {:>9.2}",
        e2e / slower
    );
    println!(
        "weir CPU per message:                           {:>9.2} µs",
        (cpu_after - cpu_before) * 1e6 / n as f64
    );
    println!(
        "weir peak RSS:                                  {:>9.1} MiB",
        peak_rss as f64 / (1 << 20) as f64
    );

    let replay = |extra: &[&str]| {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["replay", "--config"])
            .arg(&path)
            .args([
                "--from",
                &format!("{run}.raw"),
                "--to",
                &format!("{run}.replayed"),
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (elapsed, summary)
    };
    let (replay_elapsed, summary) = replay(&[]);
    assert_eq!(summary["written"], n, "{summary}");
    // Start-up alone (config, control topic, cached plugin, registry, Kafka metadata): a
    // one-message range.
    let (startup, summary) = replay(&["--partition", "0", "--end-offset", "1"]);
    assert_eq!(summary["written"], 1, "{summary}");
    let replay_rate = n as f64 / replay_elapsed.as_secs_f64();
    let steady = n as f64 / (replay_elapsed.saturating_sub(startup)).as_secs_f64();
    println!("weir replay (raw capture → topic, no MQTT):     {replay_rate:>9.0} msg/s");
    println!(
        "  start-up (a one-message replay):             {:>9.0} ms",
        startup.as_secs_f64() * 1e3
    );
    println!("  without start-up:                             {steady:>9.0} msg/s");
    println!(
        "replay / live (with start-up, without):        {:>9.2} {:>5.2}",
        replay_rate / e2e,
        steady / e2e
    );
}
