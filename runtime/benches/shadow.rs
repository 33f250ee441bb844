//! What a shadow run costs the live path, and how long a promote takes, in one run of
//! `weir run` against the test bed.
//!
//! Three phases of N messages each on one thermostat cohort, timed from the first publish
//! to the last record read back: without a shadow, with `thermostat@1.1.0` shadowing the
//! cohort, and without again. The ratio is the shadow phase's rate over the mean of the
//! other two. Then `thermostat@1.1.0` is promoted with the compiled-plugin cache off (gate,
//! compile and swap) and the promote's answer is printed.
//!
//! Run: `scripts/bench-pipeline shadow` (brings the bed up with in-memory Kafka storage).

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let n: usize = env("WEIR_BENCH_MESSAGES", "50000").parse().unwrap();
    let run = format!("shadowbench{}", std::process::id());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
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
batch_size = 100
[admin]
listen = "127.0.0.1:0"
[plugins]
dir = "{plugins}"
control_topic = "{run}.control"
[[cohort]]
name = "thermostats"
topic = "{run}/plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "{run}.thermostat"
key = "{{topic[4]}}"
"#,
        mqtt = env("WEIR_MQTT_URL", "mqtt://127.0.0.1:1883"),
        kafka = env("WEIR_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        registry = env("WEIR_REGISTRY_URL", "http://127.0.0.1:8081"),
        plugins = root.join("target/plugins").display(),
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config"])
        .arg(&path)
        .env("WEIR_LOG", "info")
        .env("WEIR_NO_CACHE", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(weir.stderr.take().unwrap()).lines();
    let mut admin = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.split("admin listening on ").nth(1) {
            admin = a.trim().to_owned();
        }
        if line.contains("MQTT subscriptions acknowledged") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .args(["--admin", &admin, "--json"])
            .output()
            .unwrap()
    };
    let topic = format!("{run}.thermostat");
    let mut published = 0usize;
    let mut phase = |label: &str| {
        let start = Instant::now();
        let want = published + n;
        let t = topic.clone();
        let counter = std::thread::spawn(move || bed::count(&t, want, Duration::from_secs(900)));
        let mut publisher = bed::Publisher::new(&format!("{run}-pub-{label}"));
        for i in 0..n {
            let payload = format!(
                r#"{{"ts":{i},"temperature":{{"value":{:.1},"unit":"F"}},"humidity":{{"value":41.5,"unit":"%"}},"fw":"3.1.0"}}"#,
                60.0 + (i % 20) as f64
            );
            publisher.publish(
                &format!("{run}/plant/1/thermostat/t-{}", i % 100),
                payload,
                &[],
            );
            if i % 1000 == 999 {
                publisher.flush();
            }
        }
        publisher.flush();
        let got = counter.join().unwrap();
        assert_eq!(got, want, "every message must arrive");
        published = want;
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!("{label:<34} {rate:>9.0} msg/s");
        rate
    };
    println!("{n} QoS 1 messages per phase, one thermostat cohort (2 shared cores; one run)");
    let before = phase("live only");
    let shadow = {
        let admin = admin.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_weir"))
                .args([
                    "plugin",
                    "shadow",
                    "thermostats",
                    "thermostat@1.1.0",
                    "--for",
                    "10m",
                    "--json",
                    "--admin",
                    &admin,
                ])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let with = phase("live + shadow of thermostat@1.1.0");
    let after = phase("live only, again");
    println!(
        "shadow / no shadow:                {:>9.3}",
        with / ((before + after) / 2.0)
    );
    let promote = cli(&["plugin", "promote", "thermostats", "thermostat@1.1.0"]);
    let answer: serde_json::Value = serde_json::from_slice(&promote.stdout).unwrap_or_default();
    let size =
        std::fs::metadata(root.join("target/plugins/thermostat-1.1.0.wasm")).map_or(0, |m| m.len());
    println!(
        "promote of a {} KB plugin, cache off: gate {} ms, live in {} ms",
        size / 1000,
        answer["gate_ms"],
        answer["swap_ms"]
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(weir.id().to_string())
        .status()
        .unwrap();
    weir.wait().unwrap();
    drop(shadow);
}
