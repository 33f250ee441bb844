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

use std::process::Command;
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let n: usize = env("WEIR_BENCH_MESSAGES", "50000").parse().unwrap();
    let run = format!("shadowbench{}", std::process::id());
    let weir = bed::Weir::start(&bed::bench_config(&run), &[]);
    let admin = weir.admin.clone();
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
        std::fs::metadata(bed::plugins_dir().join("thermostat-1.1.0.wasm")).map_or(0, |m| m.len());
    println!(
        "promote of a {} KB plugin, cache off: gate {} ms, live in {} ms",
        size / 1000,
        answer["gate_ms"],
        answer["swap_ms"]
    );
    weir.stop();
    drop(shadow);
}
