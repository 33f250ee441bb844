//! `weir replay` against the real test bed: raw capture of a stream that spans a promote,
//! verified through each message's own version and through another, replayed to a new
//! topic and read back with an independent Avro reader, and a missing version refused
//! before any work.

mod bed;

use bed::*;
use std::process::Command;
use std::time::Duration;

fn replay(
    config: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("replay")
        .arg("--config")
        .arg(config)
        .args(args)
        .arg("--json")
        .env("WEIR_NO_CACHE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), summary, stderr)
}

fn promote(weir: &Weir, plugin: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "plugin",
            "promote",
            "thermostats",
            plugin,
            "--admin",
            &weir.admin,
        ])
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Decode a Confluent-framed record with apache-avro and the schema from the registry.
fn decode_independently(value: &[u8]) -> apache_avro::types::Value {
    assert_eq!(value[0], 0, "magic byte");
    let id = u32::from_be_bytes(value[1..5].try_into().unwrap());
    let v: serde_json::Value = reqwest::blocking::get(format!("{}/schemas/ids/{id}", registry()))
        .unwrap()
        .json()
        .unwrap();
    let schema = apache_avro::Schema::parse_str(v["schema"].as_str().unwrap()).unwrap();
    apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap()
        .read_value(&mut &value[5..])
        .unwrap()
}

#[test]
fn a_range_spanning_a_promote_replays_identically_through_its_own_versions() {
    let p = unique("replay");
    let cfg = config(&p).replace(
        &format!("quarantine_topic = \"{p}.quarantine\""),
        &format!("quarantine_topic = \"{p}.quarantine\"\nraw_topic = \"{p}.raw\""),
    );
    let weir = Weir::start(&cfg, &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let mut publish_round = |n: usize, from: usize| {
        for i in from..from + n {
            let payload = match i % 3 {
                0 => format!(r#"{{"ts":{i},"temp_c":21.5}}"#),
                1 => format!(r#"{{"ts":{i},"temperature":{{"value":70.7,"unit":"F"}}}}"#),
                _ => format!(r#"{{"ts":{i},"temperature":{{"value":294.65,"unit":"K"}}}}"#),
            };
            publisher.publish(&format!("{p}/plant/1/thermostat/t{}", i % 4), payload, &[]);
        }
        publisher.flush();
    };
    // 30 through 1.0.0 (10 Kelvin quarantined), then 30 through 1.1.0 (all emitted).
    publish_round(30, 0);
    assert_eq!(count(&format!("{p}.raw"), 30, Duration::from_secs(60)), 30);
    promote(&weir, "thermostat@1.1.0");
    publish_round(30, 30);
    assert_eq!(count(&format!("{p}.raw"), 60, Duration::from_secs(60)), 60);
    assert_eq!(
        count(&format!("{p}.thermostat"), 50, Duration::from_secs(60)),
        50
    );
    assert_eq!(
        count(&format!("{p}.quarantine"), 10, Duration::from_secs(60)),
        10
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();
    let raw = format!("{p}.raw");

    // Through each message's own version: every message identical.
    let (code, s, err) = replay(&path, &[], &["--from", &raw, "--verify"]);
    assert_eq!(code, 0, "{err}\n{s}");
    assert_eq!(s["replayed"], 60, "{s}");
    assert_eq!(s["identical"], 60, "{s}");
    assert_eq!(s["different"], 0);
    assert_eq!(s["missing"], 0);

    // Through 1.1.0: what 1.0.0 processed differs (source_unit; Kelvin now emitted).
    let (code, s, err) = replay(
        &path,
        &[],
        &["--from", &raw, "--verify", "--through", "thermostat@1.1.0"],
    );
    assert_eq!(code, 1, "differences exit non-zero: {err}");
    assert_eq!(s["identical"], 30, "{s}");
    assert_eq!(s["different"], 30, "{s}");
    assert!(!s["examples"].as_array().unwrap().is_empty());

    // Only the second half (offsets past the promote, partition by partition via time is
    // not needed): replay it to a new topic and read it back with apache-avro.
    let to = format!("{p}.replayed");
    let (code, s, err) = replay(&path, &[], &["--from", &raw, "--to", &to]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s["written"], 50, "{s}");
    assert_eq!(s["quarantined"], 10, "{s}");
    let records = consume(&to, 50, Duration::from_secs(60), Duration::from_secs(1));
    assert_eq!(records.len(), 50);
    let mut with_unit = 0;
    for r in &records {
        let apache_avro::types::Value::Record(fields) = decode_independently(&r.value) else {
            panic!("not a record")
        };
        assert!(fields.iter().any(|(k, _)| k == "device_id"));
        if fields.iter().any(|(k, _)| k == "source_unit") {
            with_unit += 1;
        }
        assert!(!r.header("weir.message.id").is_empty());
    }
    assert_eq!(with_unit, 30, "the records 1.1.0 made carry its field");

    // A store and control topic without those versions: refused before any work.
    let (code, s, err) = replay(
        &path,
        &[
            ("WEIR_PLUGINS_CONTROL_TOPIC", &format!("{p}.empty-control")),
            (
                "WEIR_PLUGINS_STORE",
                dir.path().join("empty-store").to_str().unwrap(),
            ),
        ],
        &["--from", &raw, "--to", &format!("{p}.never")],
    );
    assert_eq!(code, 1);
    assert!(s.is_null());
    assert!(
        err.contains("not in the plugin store") && err.contains("sha256"),
        "{err}"
    );
    assert_eq!(count(&format!("{p}.never"), 1, Duration::from_secs(3)), 0);
}

fn weir_json(config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--json")
        .env("WEIR_NO_CACHE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn quarantine_redrive_publishes_with_provenance_once_and_never_loops() {
    let p = unique("redrive");
    let cfg = config(&p);
    let _weir = Weir::start(&cfg, &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..6 {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/k{i}"),
            format!(r#"{{"ts":{i},"temperature":{{"value":294.65,"unit":"K"}}}}"#),
            &[],
        );
    }
    for i in 0..2 {
        publisher.publish(&format!("{p}/plant/1/thermostat/m{i}"), "not json", &[]);
    }
    publisher.flush();
    let q = format!("{p}.quarantine");
    assert_eq!(count(&q, 8, Duration::from_secs(60)), 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();

    let listing = weir_json(&path, &["quarantine", "list"]);
    assert_eq!(
        listing["groups"]["thermostats"]["reading.unit"], 6,
        "{listing}"
    );
    assert_eq!(listing["groups"]["thermostats"]["payload.malformed"], 2);
    let shown = weir_json(
        &path,
        &[
            "quarantine",
            "show",
            "--code",
            "reading.unit",
            "--limit",
            "1",
        ],
    );
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert_eq!(shown[0]["headers"]["weir.error.code"], "reading.unit");
    assert!(shown[0]["payload"].as_str().unwrap().contains("294.65"));

    // Through 1.1.0 the Kelvin readings succeed: published with their provenance.
    let redrive = [
        "quarantine",
        "redrive",
        "--code",
        "reading.unit",
        "--through",
        "thermostat@1.1.0",
    ];
    let done = weir_json(&path, &redrive);
    assert_eq!(done["published"], 6, "{done}");
    let records = consume(
        &format!("{p}.thermostat"),
        6,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(records.len(), 6);
    for r in &records {
        assert_eq!(r.header("weir.plugin"), "thermostat@1.1.0");
        let (part, offset) = r.header("weir.redrive.from").split_once(':').unwrap();
        assert!(part.parse::<i32>().is_ok() && offset.parse::<i64>().is_ok());
        assert!(!r.header("weir.message.id").is_empty());
    }
    // A second redrive finds nothing left.
    assert_eq!(weir_json(&path, &redrive)["selected"], 0);

    // What keeps failing goes back with its count, and stops at --max-redrives.
    let again = [
        "quarantine",
        "redrive",
        "--code",
        "payload.malformed",
        "--max-redrives",
        "2",
    ];
    let first = weir_json(&path, &again);
    assert_eq!(
        (first["selected"].as_u64(), first["requarantined"].as_u64()),
        (Some(2), Some(2)),
        "{first}"
    );
    let second = weir_json(&path, &again);
    assert_eq!(second["requarantined"], 2, "{second}");
    let third = weir_json(&path, &again);
    assert_eq!(
        (third["selected"].as_u64(), third["refused"].as_u64()),
        (Some(2), Some(2)),
        "{third}"
    );
    assert_eq!(weir_json(&path, &again)["selected"], 0);
    assert_eq!(
        count(&q, 12, Duration::from_secs(30)),
        12,
        "8 first + 2 + 2 requarantined"
    );
}

#[test]
fn an_interrupted_resumable_replay_finishes_without_duplicates() {
    let p = unique("resume");
    let cfg = config(&p).replace(
        &format!("quarantine_topic = \"{p}.quarantine\""),
        &format!("quarantine_topic = \"{p}.quarantine\"\nraw_topic = \"{p}.raw\""),
    );
    let _weir = Weir::start(&cfg, &[]);
    let n = 3000;
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..n {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t{}", i % 10),
            format!(r#"{{"ts":{i},"temp_c":21.5}}"#),
            &[],
        );
        if i % 200 == 199 {
            publisher.flush();
        }
    }
    publisher.flush();
    assert_eq!(count(&format!("{p}.raw"), n, Duration::from_secs(120)), n);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();
    let to = format!("{p}.again");
    let args = |cmd: &mut Command| {
        cmd.arg("replay")
            .arg("--config")
            .arg(&path)
            .args(["--from", &format!("{p}.raw"), "--to", &to, "--resume"])
            .env("WEIR_NO_CACHE", "1");
    };
    // Interrupt the first run once it reports progress.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    args(&mut cmd);
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    for line in lines.by_ref() {
        if line.unwrap().contains(" messages, ") {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let first = child.wait().unwrap().code();
    assert!(matches!(first, Some(130) | Some(0)), "{first:?}");
    // The second run goes on from where the first stopped.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    args(&mut cmd);
    let out = cmd.arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = consume(&to, n, Duration::from_secs(120), Duration::from_secs(2));
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .map(|r| r.header("weir.message.id"))
        .collect();
    assert_eq!(ids.len(), n, "every message replayed");
    assert_eq!(records.len(), n, "none twice");
    eprintln!(
        "first run: exit {first:?}; the second replayed {}",
        second["replayed"]
    );
    if first == Some(130) {
        assert!(second["replayed"].as_u64().unwrap() < n as u64, "{second}");
    }
}

/// A config for `p` with a raw capture topic (`{p}.raw`), and `n` readings captured there
/// by a `weir run` that then stops.
fn captured(p: &str, n: usize) -> String {
    let cfg = config(p).replace(
        &format!("quarantine_topic = \"{p}.quarantine\""),
        &format!("quarantine_topic = \"{p}.quarantine\"\nraw_topic = \"{p}.raw\""),
    );
    let weir = Weir::start(&cfg, &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..n {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t{i}"),
            format!(r#"{{"ts":{i},"temp_c":21.5}}"#),
            &[],
        );
    }
    publisher.flush();
    assert_eq!(count(&format!("{p}.raw"), n, Duration::from_secs(60)), n);
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
    cfg
}

/// A resumable replay whose writes Kafka refuses for good records no progress past them:
/// run again once the target takes the records, it replays them instead of skipping them.
#[test]
fn a_resumed_replay_does_not_skip_writes_that_were_refused() {
    let p = unique("refresume");
    let n = 20;
    let cfg = captured(&p, n);
    let to = format!("{p}.again");
    // Too small for any replayed record: every write is refused for good.
    create_topic_with(&kafka(), &to, &[("max.message.bytes", "100")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();
    let args = ["--from", &format!("{p}.raw"), "--to", &to, "--resume"];
    let (_, first, err) = replay(&path, &[], &args);
    assert!(first["failed"].as_u64().unwrap_or(0) > 0, "{first} {err}");
    alter_topic(&kafka(), &to, &[("max.message.bytes", "1000000")]);
    let (code, second, err) = replay(&path, &[], &args);
    assert_eq!(code, 0, "{second} {err}");
    assert_eq!(second["replayed"], n as u64, "{second}");
    assert_eq!(second["failed"], 0, "{second}");
    let records = consume(&to, n + 1, Duration::from_secs(20), Duration::from_secs(2));
    assert_eq!(records.len(), n, "each record once, none skipped");
}

/// A replay whose producer's event thread dies (the first answers it reads panic it, through
/// a failpoint of test builds) ends, counting the writes no answer will come for as failed,
/// instead of waiting for ever; resumed, it writes every record.
#[test]
fn a_replay_whose_kafka_answers_stop_being_read_ends_and_resumes() {
    let p = unique("evresume");
    let n = 20;
    let cfg = captured(&p, n);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();
    let to = format!("{p}.again");
    let args = ["--from", &format!("{p}.raw"), "--to", &to, "--resume"];
    // On a thread: were the replay to wait for ever, the test fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let (first_path, first_args) = (path.clone(), args.map(str::to_owned));
    std::thread::spawn(move || {
        let args: Vec<&str> = first_args.iter().map(String::as_str).collect();
        let _ = tx.send(replay(
            &first_path,
            &[("WEIR_FAILPOINT", "kafka-events-panic")],
            &args,
        ));
    });
    let (_, first, err) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a replay whose Kafka answers stop being read ends");
    assert!(first["failed"].as_u64().unwrap_or(0) > 0, "{first} {err}");
    assert!(err.contains("event thread"), "{err}");
    let (code, second, err) = replay(&path, &[], &args);
    assert_eq!(code, 0, "{second} {err}");
    assert_eq!(second["failed"], 0, "{second}");
    // At least once: what Kafka took before its answer was lost may be there twice.
    let records = consume(&to, 2 * n, Duration::from_secs(20), Duration::from_secs(2));
    let values: std::collections::HashSet<_> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values.len(), n, "every record written");
}

/// The thermostat in Rust, Python and TypeScript side by side in one `weir run`, fed the
/// same stream: every record they publish is the same Avro, byte for byte; then
/// `weir replay` re-runs the whole raw capture (each plugin by the sha256 each message
/// recorded) and gets byte-identical output.
#[test]
fn the_python_and_typescript_thermostats_publish_and_replay_the_rust_ones_bytes() {
    let p = unique("pylang");
    // The usual plugins and the other languages' thermostats (built into directories of
    // their own).
    let plugins = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(plugins_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, plugins.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    for file in [
        "python/thermostat-py-1.0.0.wasm",
        "typescript/thermostat-ts-1.0.0.wasm",
    ] {
        let from = plugins_dir().join(file);
        std::fs::copy(&from, plugins.path().join(from.file_name().unwrap())).unwrap();
    }
    let cfg = config(&p)
        .replace(
            &format!("dir = \"{}\"", plugins_dir().display()),
            &format!("dir = \"{}\"", plugins.path().display()),
        )
        .replace(
            &format!("quarantine_topic = \"{p}.quarantine\""),
            &format!("quarantine_topic = \"{p}.quarantine\"\nraw_topic = \"{p}.raw\""),
        )
        + &format!(
            r#"
[[cohort]]
name = "thermostats-py"
topic = "{p}/py/+/thermostat/+"
plugin = "thermostat-py@1.0.0"
output_topic = "{p}.thermostat-py"
key = "{{topic[4]}}"
[[cohort]]
name = "thermostats-ts"
topic = "{p}/ts/+/thermostat/+"
plugin = "thermostat-ts@1.0.0"
output_topic = "{p}.thermostat-ts"
key = "{{topic[4]}}"
"#
        );
    // Both processes (weir run, then weir replay) compile the interpreters through one
    // cache: the replay loads what the run compiled.
    let cache = tempfile::tempdir().unwrap();
    let cache_env = [
        ("WEIR_NO_CACHE", "0"),
        ("WEIR_CACHE_DIR", cache.path().to_str().unwrap()),
    ];
    let _weir = Weir::start_within(&cfg, &cache_env, Duration::from_secs(240));
    // The shared fixtures (each with a timestamp of its own: one without takes its receive
    // time, which differs between the two publishes) and a stream of every shape.
    let fixtures =
        std::fs::read_to_string(root().join("plugins/thermostat/fixtures/input.jsonl")).unwrap();
    let mut payloads: Vec<(String, String)> = fixtures
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["payload"].as_str().unwrap().contains("\"ts\""))
        .map(|v| {
            let device = v["topic"].as_str().unwrap().rsplit('/').next().unwrap();
            (device.to_owned(), v["payload"].as_str().unwrap().to_owned())
        })
        .collect();
    for i in 0..300 {
        let f = -40.0 + f64::from(i) * 0.401;
        let payload = match i % 3 {
            0 => format!(r#"{{"ts":{i},"temp_c":{:.2}}}"#, f / 2.0),
            1 => format!(r#"{{"ts":{i},"temperature":{{"value":{f:.3},"unit":"F"}}}}"#),
            _ => format!(
                r#"{{"ts":{i},"temperature":{{"value":{f:.1}}},"humidity":{{"value":{}}}}}"#,
                i % 90
            ),
        };
        payloads.push((format!("d-{}", i % 5), payload));
    }
    // A reading that rounds to -0 °C: the sign is in the Avro double.
    payloads.push((
        "d-z".into(),
        r#"{"ts":100000,"temperature":{"value":31.999,"unit":"F"}}"#.into(),
    ));
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let trees = ["plant", "py", "ts"];
    for tree in trees {
        for (device, payload) in &payloads {
            publisher.publish(
                &format!("{p}/{tree}/7/thermostat/{device}"),
                payload.as_bytes(),
                &[],
            );
        }
    }
    publisher.flush();
    let each = payloads.len();
    let raw = format!("{p}.raw");
    let all = trees.len() * each;
    assert_eq!(count(&raw, all, Duration::from_secs(120)), all);

    // Published: the same records (by device and timestamp), the same bytes.
    let mut decoder = Decoder::new();
    let mut by_reading = |topic: &str, want: usize| {
        let records = consume(
            topic,
            want,
            Duration::from_secs(120),
            Duration::from_secs(2),
        );
        let mut out = std::collections::BTreeMap::new();
        for r in records {
            let v = decoder.decode(&r.value);
            let at = (
                v["device_id"].as_str().unwrap().to_owned(),
                v["ts_ms"].as_i64().unwrap(),
            );
            assert_eq!(r.value[0], 0, "Confluent framing");
            assert!(out.insert(at, r.value[5..].to_vec()).is_none());
        }
        out
    };
    // Every message is captured raw with its records, so the Rust cohort's records are all
    // in; each other cohort must publish as many.
    let rust = by_reading(&format!("{p}.thermostat"), 1);
    assert!(rust.len() > 250, "most of the stream emits: {}", rust.len());
    for language in ["py", "ts"] {
        let other = by_reading(&format!("{p}.thermostat-{language}"), rust.len());
        assert_eq!(rust.len(), other.len(), "{language}");
        for (at, bytes) in &rust {
            assert_eq!(Some(bytes), other.get(at), "{language}: {at:?}");
        }
    }

    // Replayed through the exact builds that first ran: identical, in every language.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();
    let (code, s, err) = replay(&path, &cache_env, &["--from", &raw, "--verify"]);
    assert_eq!(code, 0, "{err}\n{s}");
    assert_eq!(s["replayed"], all, "{s}");
    assert_eq!(s["identical"], all, "{s}");
    assert_eq!(s["different"], 0, "{s}");
}

/// Redrive through an interpreter plugin: messages the Rust adversarial plugin trapped on
/// are redriven through the Python one (pushed into the running weir; the redrive's own
/// store gets it from the control topic, in parts), which publishes them with its
/// provenance.
#[test]
fn quarantined_messages_redrive_through_a_python_plugin() {
    let p = unique("pyredrive");
    let cfg = config(&p);
    let cache = tempfile::tempdir().unwrap();
    let cache_env = [
        ("WEIR_NO_CACHE", "0"),
        ("WEIR_CACHE_DIR", cache.path().to_str().unwrap()),
    ];
    let weir = Weir::start(&cfg, &cache_env);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..3 {
        publisher.publish(&format!("{p}/chaos/c{i}"), "panic", &[]);
    }
    publisher.flush();
    let q = format!("{p}.quarantine");
    assert_eq!(count(&q, 3, Duration::from_secs(60)), 3);
    let wasm = plugins_dir().join("python/adversarial-py-0.1.0.wasm");
    let pushed = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "push"])
        .arg(&wasm)
        .args(["--admin", &weir.admin])
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &cfg).unwrap();
    let mut redrive = Command::new(env!("CARGO_BIN_EXE_weir"));
    redrive
        .args(["quarantine", "redrive", "--config"])
        .arg(&path)
        .args([
            "--cohort",
            "chaos",
            "--code",
            "plugin.trap",
            "--through",
            "adversarial-py@0.1.0",
            "--json",
        ]);
    for (k, v) in cache_env {
        redrive.env(k, v);
    }
    let out = redrive.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["published"], 3, "{done}");
    let records = consume(
        &format!("{p}.chaos"),
        3,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(records.len(), 3);
    let mut decoder = Decoder::new();
    for r in &records {
        assert_eq!(r.header("weir.plugin"), "adversarial-py@0.1.0");
        assert!(!r.header("weir.redrive.from").is_empty());
        assert_eq!(decoder.decode(&r.value)["text"], "panic");
    }
}
