//! What a plugin costs in each language: the thermostat, the same schema and payloads, as
//! a Rust, a Python and a TypeScript component.
//!
//! For each: component size; cold compile (no cache); start-up from weir's compiled cache;
//! a fresh instance made and initialised; resident memory per instance; and the transform
//! stage per message (copy in, plugin, copy out, validation, Avro) at batch 1 and 64,
//! measured in interleaved rounds in one process with the median reported, so that machine
//! drift affects every language alike.
//!
//! Run: `cargo xtask plugins && cargo bench -p weir --bench languages`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weir::transform::{Configured, Host, Limits, Message, Outcome, Plugin};

const ROUNDS: usize = 9;
const ROUND_TIME: Duration = Duration::from_millis(300);
/// Instances made to measure the memory of one.
const INSTANCES: usize = 8;

fn payload(i: usize) -> String {
    let p = format!(
        r#"{{"device":"t-{i:04}","ts":{},"temperature":{{"value":{:.1},"unit":"F"}},"setpoint":{{"value":68.0,"unit":"F"}},"humidity":{{"value":41.5,"unit":"%"}},"fw":"3.1.0","site":"plant-7","line":"line-2","model":"TX-300","rssi":-61,"uptime_s":123456,"battery":{{"value":3.61,"unit":"V"}}}}"#,
        1_700_000_000_000u64 + i as u64,
        60.0 + (i % 20) as f64
    );
    format!("{p:<300}")
}

fn batch(size: usize) -> Vec<Message> {
    (0..size)
        .map(|i| Message {
            topic: format!("plant/7/thermostat/t-{i:04}"),
            payload: payload(i).into_bytes(),
            properties: vec![],
            content_type: None,
            received_at_ms: 0,
        })
        .collect()
}

/// ns per message of `configured` on `batch`, measured for about `ROUND_TIME`.
fn measure(configured: &Configured, batch: &mut [Message]) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < ROUND_TIME {
        let out = configured.process(black_box(batch));
        assert!(matches!(out[0], Outcome::Emit(_)), "{:?}", out[0]);
        calls += 1;
    }
    start.elapsed().as_nanos() as f64 / (calls as f64 * batch.len() as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

struct Language {
    name: &'static str,
    path: PathBuf,
    size: usize,
    cold: Duration,
    cached: Duration,
    plugin: Plugin,
}

fn load(name: &'static str, path: PathBuf) -> Language {
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask plugins` first)", path.display()));
    let started = Instant::now();
    let plugin = Host::new(Limits::default(), None)
        .unwrap()
        .load(&bytes)
        .unwrap();
    let cold = started.elapsed();
    let cache = tempfile::tempdir().unwrap();
    Host::new(Limits::default(), Some(cache.path()))
        .unwrap()
        .load(&bytes)
        .unwrap();
    let host = Host::new(Limits::default(), Some(cache.path())).unwrap();
    let started = Instant::now();
    host.load(&bytes).unwrap();
    let cached = started.elapsed();
    Language {
        name,
        path,
        size: bytes.len(),
        cold,
        cached,
        plugin,
    }
}

/// A fresh instance made and initialised (configure, then one message), and the resident
/// memory each instance adds.
fn instances(l: &Language) -> (Duration, u64) {
    let mut one = batch(1);
    let before = rss_bytes();
    let started = Instant::now();
    let kept: Vec<Configured> = (0..INSTANCES)
        .map(|i| {
            let c = l.plugin.configure(vec![], format!("i{i}")).unwrap();
            c.process(&mut one);
            c
        })
        .collect();
    let each = started.elapsed() / INSTANCES as u32;
    let grown = rss_bytes().saturating_sub(before) / INSTANCES as u64;
    drop(kept);
    (each, grown)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let plugins = root.join("target/plugins");
    let languages = [
        load("rust", plugins.join("thermostat-1.0.0.wasm")),
        load("python", plugins.join("python/thermostat-py-1.0.0.wasm")),
        load(
            "typescript",
            plugins.join("typescript/thermostat-ts-1.0.0.wasm"),
        ),
    ];
    println!("thermostat plugin by language (300-byte payloads)");
    println!(
        "{:>10} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "", "size MB", "compile s", "cached ms", "instance ms", "instance MiB"
    );
    for l in &languages {
        let (instance, memory) = instances(l);
        println!(
            "{:>10} {:>12.2} {:>12.2} {:>12.1} {:>14.1} {:>14.1}",
            l.name,
            l.size as f64 / 1e6,
            l.cold.as_secs_f64(),
            l.cached.as_secs_f64() * 1e3,
            instance.as_secs_f64() * 1e3,
            memory as f64 / f64::from(1 << 20),
        );
        black_box(&l.path);
    }
    println!("\ntransform per message, median of {ROUNDS} interleaved rounds");
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>10} {:>12}",
        "batch", "rust µs", "python µs", "python/rust", "ts µs", "ts/rust"
    );
    for size in [1usize, 64] {
        let configured: Vec<Configured> = languages
            .iter()
            .map(|l| l.plugin.configure(vec![], "bench").unwrap())
            .collect();
        let mut input = batch(size);
        for c in &configured {
            measure(c, &mut input);
        }
        let mut times = vec![Vec::new(); configured.len()];
        for _ in 0..ROUNDS {
            for (c, t) in configured.iter().zip(&mut times) {
                t.push(measure(c, &mut input));
            }
        }
        let [rust, python, ts] = [0, 1, 2].map(|i| median(times[i].clone()));
        println!(
            "{size:>6} {:>10.2} {:>10.2} {:>12.1} {:>10.2} {:>12.1}",
            rust / 1e3,
            python / 1e3,
            python / rust,
            ts / 1e3,
            ts / rust,
        );
    }
}
