//! A Kafka outage: weir acknowledges nothing it cannot write, and nothing is lost.
//! It stops and starts the test bed's broker (`scripts/testbed kafka-stop|kafka-start`),
//! so it lives in its own test binary and runs alone.

mod bed;

use bed::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

fn testbed(cmd: &str) {
    let status = Command::new(root().join("scripts/testbed"))
        .arg(cmd)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/testbed {cmd}");
}

#[test]
fn kafka_outage_loses_nothing() {
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
    let mut decoder = Decoder::new();
    let seen: HashSet<i64> = records
        .iter()
        .map(|r| decoder.decode(&r.value)["ts_ms"].as_i64().unwrap())
        .collect();
    let missing: Vec<i64> = (0..700).filter(|i| !seen.contains(i)).collect();
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
