//! `weir run` end to end against the real test bed: mosquitto, a Kafka-protocol broker and
//! weir's registry (start them with `scripts/testbed up`; `scripts/test` does).

mod bed;

use bed::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn sha256_of(plugin: &str) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(plugins_dir().join(format!("{}.wasm", plugin.replace('@', "-")))).unwrap(),
    ))
}

#[test]
fn ten_thousand_messages_over_three_cohorts() {
    let p = unique("tenk");
    let weir = Weir::start(&config(&p), &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let (mut thermo, mut fleet, mut meters) = (0usize, 0usize, 0usize);
    let mut expected_thermo_keys = BTreeMap::new();
    for i in 0..10_000u32 {
        match i % 3 {
            0 => {
                let dev = format!("t-{}", i % 50);
                let payload = match i % 9 {
                    0 => format!(r#"{{"ts":{i},"temp_c":{}}}"#, 15 + i % 10),
                    3 => format!(
                        r#"{{"ts":{i},"temperature":{{"value":{},"unit":"F"}}}}"#,
                        60 + i % 10
                    ),
                    _ => format!(
                        r#"{{"ts":{i},"temperature":{{"value":20.5,"unit":"C"}},"humidity":{{"value":40}}}}"#
                    ),
                };
                publisher.publish(&format!("{p}/plant/1/thermostat/{dev}"), payload, &[]);
                *expected_thermo_keys.entry(dev).or_insert(0) += 1;
                thermo += 1;
            }
            1 => {
                let payload = format!(
                    r#"{{"positions":[{{"ts":{i},"lat":52.1,"lon":4.3,"speed_kmh":40}},{{"ts":{},"lat":52.2,"lon":4.4}}]}}"#,
                    i + 1
                );
                publisher.publish(&format!("{p}/fleet/v-{}/gps", i % 20), payload, &[]);
                fleet += 2;
            }
            _ => {
                publisher.publish(
                    &format!("{p}/meters/m/frame"),
                    meter_frame(1000 + i % 30, u64::from(i), i, 0),
                    &[],
                );
                meters += 1;
            }
        }
    }
    publisher.flush();
    let timeout = Duration::from_secs(180);
    let settle = Duration::from_secs(2);
    let t = consume(&format!("{p}.thermostat"), thermo, timeout, settle);
    let f = consume(&format!("{p}.fleet"), fleet, timeout, settle);
    let m = consume(&format!("{p}.meter"), meters, timeout, settle);
    assert_eq!(
        (t.len(), f.len(), m.len()),
        (thermo, fleet, meters),
        "exactly the expected records"
    );
    let q = consume(
        &format!("{p}.quarantine"),
        0,
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    assert!(
        q.is_empty(),
        "nothing quarantined: {:?}",
        q.first().map(|r| &r.headers)
    );

    let mut decoder = Decoder::new();
    let thermo_sha = sha256_of("thermostat@1.0.0");
    let mut keys = BTreeMap::new();
    for r in &t {
        let v = decoder.decode(&r.value);
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert_eq!(
            v["device_id"],
            key.as_str(),
            "key is the device id from the topic"
        );
        *keys.entry(key).or_insert(0) += 1;
        assert_eq!(r.header("weir.plugin"), "thermostat@1.0.0");
        assert_eq!(r.header("weir.plugin.sha256"), thermo_sha);
        assert_eq!(r.header("weir.cohort"), "thermostats");
        assert!(
            r.header("weir.mqtt.topic")
                .ends_with(&format!("/thermostat/{}", v["device_id"].as_str().unwrap()))
        );
        assert!(r.header("weir.received_at").parse::<i64>().unwrap() > 1_600_000_000_000);
        assert!(v["temperature_c"].as_f64().unwrap() > 10.0);
    }
    assert_eq!(keys, expected_thermo_keys);
    for r in &f {
        let v = decoder.decode(&r.value);
        assert_eq!(
            r.key.as_deref(),
            Some(v["vehicle_id"].as_str().unwrap().as_bytes())
        );
        assert_eq!(r.header("weir.cohort"), "fleet");
    }
    let mut meter_ids = HashMap::new();
    for r in &m {
        let v = decoder.decode(&r.value);
        let id = v["meter_id"].as_i64().unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(format!("m-{id}").as_bytes()),
            "key from a record field"
        );
        *meter_ids.entry(id).or_insert(0) += 1;
    }
    assert_eq!(
        meter_ids.len(),
        10,
        "i % 30 over i ≡ 2 (mod 3) gives 10 meters"
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "weir exits 0 on SIGTERM:\n{log}");
}

#[test]
fn bad_messages_are_quarantined_with_codes_and_original_bytes() {
    let p = unique("quar");
    let weir = Weir::start(&config(&p), &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let cases: Vec<(String, Vec<u8>, &str, &str)> = vec![
        (
            format!("{p}/plant/1/thermostat/t-1"),
            b"{not json".to_vec(),
            "payload.malformed",
            "transform",
        ),
        (
            format!("{p}/plant/1/thermostat/t-2"),
            br#"{"temp_c":500}"#.to_vec(),
            "reading.out-of-range",
            "transform",
        ),
        (
            format!("{p}/nowhere/x"),
            b"\x00\x01binary".to_vec(),
            "route.unmatched",
            "route",
        ),
        (
            format!("{p}/chaos/a"),
            b"panic".to_vec(),
            "plugin.trap",
            "transform",
        ),
        (
            format!("{p}/chaos/b"),
            b"badschema".to_vec(),
            "schema.violation",
            "encode",
        ),
        (
            format!("{p}/meters/m/frame"),
            b"short".to_vec(),
            "frame.length",
            "transform",
        ),
    ];
    for (topic, payload, _, _) in &cases {
        publisher.publish(topic, payload.clone(), &[]);
    }
    // A good message after the bad ones still goes through.
    publisher.publish(&format!("{p}/chaos/c"), "fine", &[]);
    publisher.flush();
    let q = consume(
        &format!("{p}.quarantine"),
        cases.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    assert_eq!(q.len(), cases.len());
    for (topic, payload, code, stage) in &cases {
        let r = q
            .iter()
            .find(|r| r.header("weir.mqtt.topic") == topic)
            .unwrap_or_else(|| panic!("no quarantine entry for {topic}"));
        assert_eq!(r.header("weir.error.code"), *code, "{topic}");
        assert_eq!(r.header("weir.error.stage"), *stage, "{topic}");
        assert!(!r.header("weir.error.message").is_empty());
        assert_eq!(&r.value, payload, "original bytes, untouched");
        if *code != "route.unmatched" {
            assert!(r.header("weir.plugin").contains('@'));
            assert_eq!(r.header("weir.plugin.sha256").len(), 64);
        }
    }
    let chaos = consume(
        &format!("{p}.chaos"),
        1,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    assert_eq!(chaos.len(), 1, "only the good chaos message is governed");
    assert_eq!(Decoder::new().decode(&chaos[0].value)["text"], "fine");
    for topic in ["thermostat", "meter"] {
        assert!(
            consume(
                &format!("{p}.{topic}"),
                0,
                Duration::from_secs(2),
                Duration::from_secs(1)
            )
            .is_empty()
        );
    }
    // Every series the shipped Grafana dashboard and alert rules query is exported.
    let metrics = weir.metrics();
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(root().join("examples/monitoring").join(file)).unwrap();
        let mut names: Vec<&str> = text
            .match_indices("weir_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        names.dedup();
        assert!(names.len() > 5, "{file} queries weir's metrics");
        for name in names {
            // A labelled family without series yet still declares its type.
            let family = ["_total", "_bucket"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            let declared = format!("# TYPE {family} ");
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(name) || l.starts_with(&declared)),
                "{file} queries {name}, which /metrics does not have:\n{metrics}"
            );
        }
    }
    drop(weir);
}

#[test]
fn user_properties_become_headers_and_mqtt_311_works() {
    let p = unique("props");
    let weir = Weir::start(&config(&p), &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    publisher.publish(
        &format!("{p}/plant/1/thermostat/t-9"),
        r#"{"temp_c":20}"#,
        &[("fw", "3.1.0"), ("site", "nl-ams")],
    );
    publisher.flush();
    let t = consume(
        &format!("{p}.thermostat"),
        1,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].header("mqtt.fw"), "3.1.0");
    assert_eq!(t[0].header("mqtt.site"), "nl-ams");
    drop(weir);

    let p = unique("v311");
    let weir = Weir::start(&config(&p), &[("WEIR_MQTT_PROTOCOL", "\"3.1.1\"")]);
    assert!(weir.log.lock().unwrap().contains("MQTT 3.1.1 connected"));
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..20 {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{i}"),
            r#"{"temp_c":20}"#,
            &[],
        );
    }
    publisher.flush();
    let t = consume(
        &format!("{p}.thermostat"),
        20,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(t.len(), 20);
    let (status, _) = weir.stop();
    assert!(status.success());
}

#[test]
fn repeated_sigkill_mid_stream_loses_nothing() {
    let p = unique("kill");
    let mut weir = Weir::start(&config(&p), &[]);
    let total = 20_000u32;
    let publisher_thread = {
        let p = p.clone();
        std::thread::spawn(move || {
            let mut publisher = Publisher::new(&format!("{p}-pub"));
            for i in 0..total {
                publisher.publish(
                    &format!("{p}/plant/1/thermostat/t-{}", i % 7),
                    format!(r#"{{"ts":{i},"temp_c":20}}"#),
                    &[],
                );
                // About 2,000 messages/s, so each kill lands mid-stream.
                if i % 500 == 499 {
                    publisher.flush();
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            publisher.flush();
        })
    };
    // Kill weir three times, each once more of the stream is in Kafka.
    let topic = format!("{p}.thermostat");
    let started = std::time::Instant::now();
    let mut kills = Vec::new();
    for at in [2_000usize, 7_000, 12_000] {
        while count(&topic, at, Duration::from_secs(30)) < at {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "fewer than {at} records reached Kafka in 300 s"
            );
        }
        let before = count(&topic, usize::MAX, Duration::from_secs(2));
        let dir = weir.kill();
        kills.push(before);
        weir = Weir::restart(dir, &[]);
    }
    publisher_thread.join().unwrap();
    let records = consume(
        &topic,
        total as usize,
        Duration::from_secs(300),
        Duration::from_secs(3),
    );
    let seen = ts_counts(&records);
    let missing: Vec<u32> = (0..total)
        .filter(|i| !seen.contains_key(&i64::from(*i)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "sigkill test: {total} published, 3 SIGKILLs (at {kills:?} records), {} records, {duplicates} duplicates ({:.0} per SIGKILL)",
        records.len(),
        duplicates as f64 / 3.0
    );
    drop(weir);
}

#[test]
fn raw_capture_keeps_every_message_untouched() {
    let p = unique("raw");
    let raw_topic = format!("{p}.raw");
    let weir = Weir::start(&config(&p), &[("WEIR_OUTPUT_RAW_TOPIC", &raw_topic)]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let good = br#"{"temp_c":20}"#.to_vec();
    let bad = b"\xff\xfe not json".to_vec();
    publisher.publish(
        &format!("{p}/plant/1/thermostat/t-1"),
        good.clone(),
        &[("fw", "1.0")],
    );
    publisher.publish(&format!("{p}/plant/1/thermostat/t-2"), bad.clone(), &[]);
    publisher.flush();
    let raw = consume(
        &raw_topic,
        2,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(raw.len(), 2, "every message captured, good or bad");
    // Keyed by MQTT topic, so the two may sit in different partitions: find each by topic.
    let by_topic = |suffix: &str| {
        raw.iter()
            .find(|r| r.header("weir.mqtt.topic").ends_with(suffix))
            .unwrap()
    };
    assert_eq!(by_topic("/t-1").value, good);
    assert_eq!(by_topic("/t-2").value, bad);
    assert_eq!(by_topic("/t-1").header("mqtt.fw"), "1.0");
    assert_eq!(
        consume(
            &format!("{p}.thermostat"),
            1,
            Duration::from_secs(30),
            Duration::from_secs(1)
        )
        .len(),
        1
    );
    assert_eq!(
        consume(
            &format!("{p}.quarantine"),
            1,
            Duration::from_secs(30),
            Duration::from_secs(1)
        )
        .len(),
        1
    );
    drop(weir);
}

/// A registry that requires credentials (`weir registry serve --credentials-file`): weir
/// presenting `[registry] credentials_file` registers its schemas and writes records; weir
/// without it, or with a wrong one, stops at start-up naming the registry's refusal.
#[test]
fn a_registry_that_requires_credentials_is_used_with_them_and_refuses_without() {
    use std::io::BufRead;
    let p = unique("regauth");
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::write(&allowed, "basic weir:s3cret\n").unwrap();
    /// The registry process, stopped however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--credentials-file")
        .arg(&allowed)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(Server)
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("schema registry listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    // (The test bed's WEIR_REGISTRY_URL would override the config's url: set it to this one.)
    let env = [("WEIR_REGISTRY_URL", url.as_str())];
    let with_credential = |p: &str, credential: Option<&str>| {
        let mut config = config(p);
        if let Some(c) = credential {
            let file = dir.path().join(format!("presented-{p}"));
            std::fs::write(&file, format!("{c}\n")).unwrap();
            config = config.replace(
                &format!("url = \"{}\"", registry()),
                &format!("url = \"{url}\"\ncredentials_file = \"{}\"", file.display()),
            );
        }
        config
    };

    for (case, credential) in [("none", None), ("wrong", Some("basic weir:guess"))] {
        let err = start_fails(&with_credential(&format!("{p}{case}"), credential), &env);
        assert!(
            err.contains("401") || err.to_lowercase().contains("unauthorized"),
            "{case}: {err}"
        );
    }

    let weir = Weir::start(&with_credential(&p, Some("basic weir:s3cret")), &env);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    publisher.publish(
        &format!("{p}/plant/1/thermostat/t-1"),
        r#"{"ts":1,"temp_c":20}"#,
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
    // The record's schema id is one this registry gave, read back with the credential.
    let id = u32::from_be_bytes(records[0].value[1..5].try_into().unwrap());
    let client = reqwest::blocking::Client::new();
    let get = |auth: bool| {
        let mut req = client.get(format!("{url}/schemas/ids/{id}"));
        if auth {
            req = req.basic_auth("weir", Some("s3cret"));
        }
        req.send().unwrap().status()
    };
    assert_eq!(get(true), reqwest::StatusCode::OK);
    assert_eq!(get(false), reqwest::StatusCode::UNAUTHORIZED);
    drop(weir);
}

#[test]
fn a_bad_config_stops_start_up_naming_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let p = unique("badcfg");
    std::fs::write(
        &path,
        config(&p).replace("fleet-gps@1.0.0", "fleet-gps@9.9.9"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config"])
        .arg(&path)
        .env("WEIR_NO_CACHE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("weir.toml: cohort[1].plugin: fleet-gps@9.9.9 is not in"),
        "{err}"
    );
    assert!(
        err.contains("fleet-gps@1.0.0"),
        "lists what is there: {err}"
    );
}
