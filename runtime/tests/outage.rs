//! Broker outages: weir acknowledges nothing it cannot write, nothing is lost, and it
//! reconnects by itself. These tests stop and start the test bed's brokers
//! (`scripts/testbed kafka-stop|kafka-start|mqtt-stop|mqtt-start`), so they live in their
//! own test binary and run one at a time (a lock below).

mod bed;

use bed::*;
use std::process::Command;
use std::time::Duration;

/// One outage at a time: the tests share the test bed's brokers.
static BED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn testbed(cmd: &str) {
    let status = Command::new(root().join("scripts/testbed"))
        .arg(cmd)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/testbed {cmd}");
}

#[test]
fn kafka_outage_loses_nothing() {
    let _bed = BED.lock().unwrap_or_else(|p| p.into_inner());
    let p = unique("outage");
    let weir = Weir::start(&config(&p), &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let topic = format!("{p}.thermostat");
    let publish = |publisher: &mut Publisher, range: std::ops::Range<u32>| {
        for i in range {
            publisher.publish(
                &format!("{p}/plant/1/thermostat/t-{}", i % 5),
                format!(r#"{{"ts":{i},"temp_c":21}}"#),
                &[],
            );
        }
        publisher.flush();
    };
    publish(&mut publisher, 0..200);
    assert_eq!(
        consume(&topic, 200, Duration::from_secs(60), Duration::from_secs(1)).len(),
        200
    );

    testbed("kafka-stop");
    publish(&mut publisher, 200..500);
    // While Kafka is down, weir holds these unacknowledged and says it is not ready. Kill
    // it: had it acknowledged any of them, the broker would not redeliver them.
    wait_not_ready(&weir, "Kafka not reachable");
    let m = bed::parse_metrics(&weir.metrics());
    assert!(
        m["weir_acked_total{}"].as_f64().unwrap() <= 200.0,
        "nothing acknowledged during the outage"
    );
    let dir = weir.kill();
    testbed("kafka-start");
    // An outage longer than every timeout weir's producer is configured with (requests
    // time out after 2 s here); writes never expire, so it ends with everything in Kafka.
    let env = [("WEIR_KAFKA_PROPERTY_REQUEST_TIMEOUT_MS", "2000")];
    let weir = Weir::restart(dir, &env);
    publish(&mut publisher, 500..600);
    testbed("kafka-stop");
    publish(&mut publisher, 600..700);
    wait_not_ready(&weir, "Kafka not reachable");
    std::thread::sleep(Duration::from_secs(10));
    testbed("kafka-start");
    weir.wait_ready(Duration::from_secs(60));

    let records = consume(
        &topic,
        700,
        Duration::from_secs(240),
        Duration::from_secs(3),
    );
    let seen = ts_counts(&records);
    let missing: Vec<i64> = (0..700).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "outage test: 700 published, {} records ({} duplicates)",
        records.len(),
        records.len() - seen.len()
    );
    // Acks flow again: everything is acknowledged.
    bed::wait_until(
        "acks resume",
        Duration::from_secs(60),
        || weir.metrics(),
        || {
            bed::parse_metrics(&weir.metrics())["weir_in_flight{}"]
                .as_f64()
                .unwrap()
                == 0.0
        },
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

/// Wait until `/readyz` says not ready, for `why`.
fn wait_not_ready(weir: &Weir, why: &str) {
    let readyz = || http_get(&format!("{}/readyz", weir.admin));
    bed::wait_until(
        &format!("/readyz says not ready: {why}"),
        Duration::from_secs(60),
        || format!("{:?}", readyz()),
        || matches!(readyz(), Some((503, body)) if body.contains(why)),
    );
}

/// SIGTERM while Kafka is away: no write can complete, so weir stops within seconds
/// instead of waiting out a shutdown timeout (here a minute, longer than any supervisor
/// would wait) and being SIGKILLed.
#[test]
fn sigterm_during_a_kafka_outage_exits_promptly() {
    let _bed = BED.lock().unwrap_or_else(|p| p.into_inner());
    let p = unique("termout");
    let config = config(&p).replace("[output]", "[output]\nshutdown_timeout_s = 60");
    let weir = Weir::start(&config, &[]);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    testbed("kafka-stop");
    for i in 0..50u32 {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-1"),
            format!(r#"{{"ts":{i},"temp_c":21}}"#),
            &[],
        );
    }
    publisher.flush();
    wait_not_ready(&weir, "Kafka not reachable");
    let started = std::time::Instant::now();
    weir.sigterm();
    let (status, log) = weir.wait_exit(Duration::from_secs(20));
    let took = started.elapsed();
    testbed("kafka-start");
    let status =
        status.unwrap_or_else(|| panic!("weir did not exit within 20 s of SIGTERM:\n{log}"));
    assert_eq!(
        status.code(),
        Some(3),
        "exit code 3 = stopped with messages unacknowledged: {log}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(log.contains("no write can complete"), "{log}");
    assert!(log.contains("left unacknowledged with the broker"), "{log}");
    // Nothing was acknowledged, so a new session gets all 50.
    let weir = Weir::start(&config, &[]);
    let records = consume(
        &format!("{p}.thermostat"),
        50,
        Duration::from_secs(120),
        Duration::from_secs(2),
    );
    assert_eq!(ts_counts(&records).len(), 50);
    // A second signal stops at once.
    testbed("kafka-stop");
    publisher.publish(
        &format!("{p}/plant/1/thermostat/t-1"),
        r#"{"ts":99,"temp_c":21}"#,
        &[],
    );
    publisher.flush();
    wait_not_ready(&weir, "Kafka not reachable");
    let started = std::time::Instant::now();
    weir.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    weir.sigterm();
    let (status, log) = weir.wait_exit(Duration::from_secs(20));
    let took = started.elapsed();
    testbed("kafka-start");
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn weir_reconnects_after_an_mqtt_broker_restart() {
    let _bed = BED.lock().unwrap_or_else(|p| p.into_inner());
    let p = unique("mqttre");
    let weir = Weir::start(&config(&p), &[]);
    let topic = format!("{p}.thermostat");
    let publish = |range: std::ops::Range<u32>| {
        let mut publisher = Publisher::new(&format!("{p}-pub{}", range.start));
        for i in range {
            publisher.publish(
                &format!("{p}/plant/1/thermostat/t-1"),
                format!(r#"{{"ts":{i},"temp_c":21}}"#),
                &[],
            );
        }
        publisher.flush();
    };
    publish(0..100);
    assert_eq!(
        consume(&topic, 100, Duration::from_secs(60), Duration::ZERO).len(),
        100
    );
    // Restart the broker while a stream is in flight to weir.
    let in_flight = {
        let p = p.clone();
        std::thread::spawn(move || {
            let mut publisher = Publisher::new(&format!("{p}-pubf"));
            for i in 200..2200u32 {
                publisher.publish(
                    &format!("{p}/plant/1/thermostat/t-1"),
                    format!(r#"{{"ts":{i},"temp_c":21}}"#),
                    &[],
                );
            }
            publisher.flush();
        })
    };
    in_flight.join().unwrap();
    testbed("mqtt-stop");
    testbed("mqtt-start");
    // weir's session (clean start off, session expiry) survives the broker's restart, so
    // what is published next reaches weir once it has reconnected by itself.
    publish(100..200);
    let records = consume(
        &topic,
        2200,
        Duration::from_secs(120),
        Duration::from_secs(2),
    );
    let seen = ts_counts(&records);
    assert_eq!(
        seen.len(),
        2200,
        "after the restart: {} of 200; weir's log:\n{}",
        seen.len(),
        weir.log.lock().unwrap()
    );
    assert!(
        weir.log
            .lock()
            .unwrap()
            .contains("MQTT connection lost; reconnecting")
    );
    let m = bed::parse_metrics(&weir.metrics());
    assert!(m["weir_mqtt_reconnects_total{}"].as_f64().unwrap() >= 1.0);
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}
