//! The status page (`/` on the admin listener) in a real browser: Debian's headless
//! Chromium loads it, the numbers it shows match `/metrics`, and a screenshot is kept in
//! `target/test-artifacts/status-page.png`.

mod bed;

use bed::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Chromium, headless, with `args`; its stdout.
fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (scripts/test installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in `dom` (inside any elements it opens with).
fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} in the page:\n{dom}"));
    let mut rest = &dom[at..];
    rest = &rest[rest.find('>').unwrap() + 1..];
    while rest.starts_with('<') && !rest.starts_with("</") {
        rest = &rest[rest.find('>').unwrap() + 1..];
    }
    rest[..rest.find('<').unwrap()].trim()
}

/// The value of the series `prefix` (a name with its labels, if any) in `/metrics`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn status_page_in_a_browser_matches_metrics() {
    let p = unique("status");
    // The meters in an isolation group of their own, so that the page has two groups.
    let config = config(&p)
        .replace(
            &format!(r#"subscriptions = ["{p}/#"]"#),
            &format!(r#"subscriptions = ["{p}/plant/#", "{p}/fleet/#", "{p}/chaos/#"]"#),
        )
        .replace(
            r#"plugin = "meter@1.0.0""#,
            r#"plugin = "meter@1.0.0"
group = "meters""#,
        )
        + &format!("[[group]]\nname = \"meters\"\nsubscriptions = [\"{p}/meters/#\"]\n");
    let weir = Weir::start(&config, &[]);
    let promote = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "promote", "thermostats", "thermostat@1.1.0"])
        .args(["--admin", &weir.admin])
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        promote.status.success(),
        "{}",
        String::from_utf8_lossy(&promote.stderr)
    );
    // A rendering before the messages: the page's rates are taken against it.
    let before = Instant::now();
    assert_eq!(
        http_get(&format!("{}/", weir.admin)).map(|r| r.0),
        Some(200)
    );
    let rendered = Instant::now();
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    for i in 0..30 {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{i}"),
            format!(r#"{{"ts":{i},"temp_c":21}}"#),
            &[],
        );
    }
    for _ in 0..3 {
        publisher.publish(&format!("{p}/plant/1/thermostat/t-x"), "{not json", &[]);
    }
    for i in 0..7 {
        publisher.publish(
            &format!("{p}/meters/m-{i}/frame"),
            meter_frame(1000 + i, u64::from(i), i, 0),
            &[],
        );
    }
    publisher.flush();
    // Settled: everything acknowledged, so the page and /metrics see the same numbers.
    let start = Instant::now();
    let metrics = loop {
        let m = weir.metrics();
        if metric(&m, "weir_acked_total") >= 40.0 {
            break m;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "weir acks all");
        std::thread::sleep(Duration::from_millis(50));
    };

    let url = format!("{}/", weir.admin);
    let asked = Instant::now();
    let dom = chromium(&["--dump-dom", &url]);
    let answered = Instant::now();
    let shown = |id: &str| -> f64 {
        by_id(&dom, id)
            .parse()
            .unwrap_or_else(|_| panic!("{id} is not a number"))
    };
    assert_eq!(by_id(&dom, "ready"), "ready");
    assert_eq!(shown("received"), metric(&metrics, "weir_received_total"));
    assert_eq!(shown("acked"), metric(&metrics, "weir_acked_total"));
    assert_eq!(shown("in_flight"), metric(&metrics, "weir_in_flight "));
    assert_eq!(
        shown("oldest_unacked"),
        metric(&metrics, "weir_oldest_unacked_seconds ")
    );
    // Each group: its session, in flight, oldest unacknowledged age and acknowledged.
    for (group, acked) in [("default", 33.0), ("meters", 7.0)] {
        let label = format!("{{group=\"{group}\"}}");
        assert_eq!(by_id(&dom, &format!("session-{group}")), "connected");
        assert_eq!(metric(&metrics, &format!("weir_group_ready{label}")), 1.0);
        assert_eq!(
            shown(&format!("acked-{group}")),
            metric(&metrics, &format!("weir_ack_seconds_count{label}"))
        );
        assert_eq!(shown(&format!("acked-{group}")), acked);
        assert_eq!(
            shown(&format!("in_flight-{group}")),
            metric(&metrics, &format!("weir_group_in_flight{label}"))
        );
        assert_eq!(
            shown(&format!("oldest-{group}")),
            metric(
                &metrics,
                &format!("weir_group_oldest_unacked_seconds{label}")
            )
        );
    }
    assert!(
        dom.contains("<td>meters</td><td>meters</td><td id=\"version-meters\">meter@1.0.0</td>"),
        "the meters cohort is shown in its group:\n{dom}"
    );
    assert_eq!(
        shown("records-meters"),
        metric(&metrics, "weir_records_total{cohort=\"meters\"}")
    );
    assert_eq!(shown("records-meters"), 7.0);
    assert_eq!(
        shown("records-thermostats"),
        metric(&metrics, "weir_records_total{cohort=\"thermostats\"}")
    );
    assert_eq!(shown("records-thermostats"), 30.0);
    assert_eq!(
        shown("quarantined-thermostats"),
        metric(
            &metrics,
            "weir_quarantined_total{cohort=\"thermostats\",code=\"payload.malformed\""
        )
    );
    assert_eq!(shown("quarantined-thermostats"), 3.0);
    // Rates: what arrived since the first rendering over the time between the two, which
    // the test knows to within the renderings' own durations.
    let rate = |id: &str, count: f64| {
        let text = by_id(&dom, &format!("{id}-rate"));
        let shown: f64 = text
            .strip_suffix("/s")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{id}-rate is not a rate: {text}"));
        let fastest = count / (asked - rendered).as_secs_f64();
        let slowest = count / (answered - before).as_secs_f64();
        assert!(
            shown >= slowest - 0.05 && shown <= fastest + 0.05,
            "{id}: {shown}/s, not between {slowest:.2} and {fastest:.2}"
        );
    };
    rate("received", 40.0);
    rate("acked", 40.0);
    rate("acked-default", 33.0);
    rate("acked-meters", 7.0);
    rate("records-thermostats", 30.0);
    rate("records-meters", 7.0);
    // Quarantines by code.
    assert_eq!(shown("q-thermostats-payload.malformed"), 3.0);
    assert_eq!(by_id(&dom, "version-thermostats"), "thermostat@1.1.0");
    assert!(
        dom.contains("<td>promote</td>") && dom.contains("thermostat@1.1.0"),
        "the promote is listed:\n{dom}"
    );
    assert!(dom.contains("http-equiv=\"refresh\""), "it reloads itself");

    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1280,1000",
        &url,
    ]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "a real PNG"
    );
}
