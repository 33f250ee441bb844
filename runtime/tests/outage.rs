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
    // While Kafka is down, weir holds these unacknowledged. Kill it: had it acknowledged any
    // of them, the broker would not redeliver them and they would be lost.
    std::thread::sleep(Duration::from_secs(3));
    let dir = weir.kill();
    testbed("kafka-start");
    let weir = Weir::restart(dir, &[]);
    // And an outage weir rides out without a restart.
    publish(&mut publisher, 500..600);
    testbed("kafka-stop");
    publish(&mut publisher, 600..700);
    std::thread::sleep(Duration::from_secs(2));
    testbed("kafka-start");

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
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
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
    testbed("mqtt-stop");
    testbed("mqtt-start");
    // weir's session (clean start off, session expiry) survives the broker's restart, so
    // what is published next reaches weir once it has reconnected by itself.
    publish(100..200);
    let records = consume(
        &topic,
        200,
        Duration::from_secs(120),
        Duration::from_secs(2),
    );
    let seen = ts_counts(&records);
    assert_eq!(
        seen.len(),
        200,
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
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}
