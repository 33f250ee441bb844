//! The plugin lifecycle against the real test bed: push, promote while devices publish,
//! the registry's gate, tokens, rollback, restart, and two processes converging through
//! the control topic. Uses the `weir plugin` / `weir cohort` commands as an operator would.

mod bed;

use bed::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const TOKEN: &str = "ops:0123456789abcdef-lifecycle";

fn sha256_file(id: &str) -> String {
    let path = plugins_dir().join(format!("{}.wasm", id.replace('@', "-")));
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Run `weir ARGS --admin URL --json` with `token`; exit success, stdout, stderr.
fn cli(weir: &Weir, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .args(["--admin", &weir.admin, "--json"])
        .env_remove("WEIR_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The version `cohort` runs in `weir`.
fn running(weir: &Weir, cohort: &str) -> String {
    let (ok, out, err) = cli(weir, Some(TOKEN), &["cohort", "list"]);
    assert!(ok, "{err}");
    let list = json(&out);
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cohort"] == cohort)
        .unwrap();
    format!(
        "{}@{}",
        c["plugin"]["name"].as_str().unwrap(),
        c["plugin"]["version"].as_str().unwrap()
    )
}

/// The cohort's audit trail and its actions in order.
fn history(weir: &Weir, token: Option<&str>, cohort: &str) -> (serde_json::Value, Vec<String>) {
    let (ok, out, err) = cli(weir, token, &["plugin", "history", cohort]);
    assert!(ok, "{err}");
    let history = json(&out);
    let actions = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    (history, actions)
}

fn wait_running(weir: &Weir, cohort: &str, want: &str) {
    wait_until(
        &format!("{cohort} switches to {want}"),
        Duration::from_secs(30),
        || weir.log.lock().unwrap().clone(),
        || running(weir, cohort) == want,
    );
}

/// Every device's records in Kafka order: each message once, in order, and its version
/// switching once from `old` to `new`.
fn check_cutover(records: &[Rec], devices: usize, rounds: usize, old: &str, new: &str) {
    check_cutover_from(records, devices, 0..rounds, old, new);
}

/// As [`check_cutover`], for the readings numbered `range` (the records of later loads).
fn check_cutover_from(
    records: &[Rec],
    devices: usize,
    range: std::ops::Range<usize>,
    old: &str,
    new: &str,
) {
    let mut by_device: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let mut decoder = Decoder::new();
    for r in records {
        let v = decoder.decode(&r.value);
        let ts = v["ts_ms"].as_i64().unwrap();
        if !range.contains(&(ts as usize)) {
            continue;
        }
        by_device
            .entry(v["device_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((ts, r.header("weir.plugin.sha256").to_owned()));
    }
    assert_eq!(by_device.len(), devices);
    let (mut before, mut after) = (0, 0);
    for (device, seq) in &by_device {
        let ts: Vec<i64> = seq.iter().map(|(t, _)| *t).collect();
        let want: Vec<i64> = (range.start as i64..range.end as i64).collect();
        assert_eq!(ts, want, "{device}: every reading once, in order");
        let shas: Vec<&str> = seq.iter().map(|(_, s)| s.as_str()).collect();
        let switch = shas.iter().position(|s| *s == new).unwrap_or(shas.len());
        assert!(
            shas[..switch].iter().all(|s| *s == old) && shas[switch..].iter().all(|s| *s == new),
            "{device}: versions must switch once, old then new: {shas:?}"
        );
        before += switch;
        after += shas.len() - switch;
    }
    assert!(
        before > 0 && after > 0,
        "the promote landed mid-stream ({before} before, {after} after)"
    );
}

#[test]
fn promote_under_load_then_refusals_leave_the_live_version_alone() {
    let p = unique("promote");
    let weir = Weir::start(&config(&p), &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    let (old, new) = (
        sha256_file("thermostat@1.0.0"),
        sha256_file("thermostat@1.1.0"),
    );
    let devices = 5;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(500);

    let (ok, out, err) = cli(
        &weir,
        Some(TOKEN),
        &["plugin", "promote", "thermostats", "thermostat@1.1.0"],
    );
    assert!(ok, "promote failed: {err}");
    let promoted = json(&out);
    assert_eq!(promoted["to"]["sha256"], new.as_str());
    assert_eq!(promoted["from"]["sha256"], old.as_str());
    eprintln!(
        "promote: gate {} ms, live in {} ms",
        promoted["gate_ms"], promoted["swap_ms"]
    );
    let (rounds, records) = load.finish_after(500, &p, devices);
    assert_eq!(
        records.len(),
        rounds * devices,
        "every message published exactly once"
    );
    check_cutover(&records, devices, rounds, &old, &new);

    // The cutover is in the history, with the first message through 1.1.0.
    let (history, actions) = history(&weir, Some(TOKEN), "thermostats");
    assert_eq!(actions, ["promote", "cutover"], "{history}");
    assert_eq!(history[0]["by"], "ops");
    assert_eq!(history[0]["old_sha256"], old.as_str());
    assert!(
        history[1]["cutover"]["first_topic"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{p}/plant/1/thermostat/d"))
    );

    // 2.0.0 changes a field's type: the registry's reason, and 1.1.0 stays live.
    let (ok, _, err) = cli(
        &weir,
        Some(TOKEN),
        &["plugin", "promote", "thermostats", "thermostat@2.0.0"],
    );
    assert!(!ok);
    assert!(
        err.contains("409") && err.contains("payload_version") && err.contains("registry"),
        "{err}"
    );
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.1.0");

    // A wrong token: 401, and nothing changes.
    let (ok, _, err) = cli(
        &weir,
        Some("ops:wrong-token-0123456789"),
        &["plugin", "rollback", "thermostats"],
    );
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = cli(&weir, None, &["plugin", "list"]);
    assert!(!ok && err.contains("401"), "{err}");
    // A change a web page could send (text/plain, no preflight) is refused too.
    let status = reqwest::blocking::Client::new()
        .post(format!("{}/v1/cohorts/thermostats/rollback", weir.admin))
        .bearer_auth(TOKEN.split_once(':').unwrap().1)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 415);
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.1.0");

    // Other bytes under a stored name@version: refused.
    let mut tampered = std::fs::read(plugins_dir().join("thermostat-1.1.0.wasm")).unwrap();
    tampered.extend_from_slice(&[0, 6, 5, b'n', b'o', b't', b'e', b'!']);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &tampered).unwrap();
    let (ok, _, err) = cli(
        &weir,
        Some(TOKEN),
        &["plugin", "push", file.path().to_str().unwrap()],
    );
    assert!(
        !ok && err.contains("409") && err.contains("immutable"),
        "{err}"
    );
    // The same bytes again are fine; a file that is not a plugin is refused.
    let (ok, out, err) = cli(
        &weir,
        Some(TOKEN),
        &[
            "plugin",
            "push",
            plugins_dir()
                .join("thermostat-1.1.0.wasm")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(json(&out)["sha256"], new.as_str());
    std::fs::write(file.path(), b"not wasm").unwrap();
    let (ok, _, err) = cli(
        &weir,
        Some(TOKEN),
        &["plugin", "push", file.path().to_str().unwrap()],
    );
    assert!(!ok && err.contains("422"), "{err}");
    // A component that would take more of the instance pool than one plugin may: refused
    // at push with the reason, before anything is stored or runs.
    let n = weir::transform::MAX_CORE_INSTANCES_PER_COMPONENT + 1;
    let instances: String = (0..n)
        .map(|i| format!("(core instance $i{i} (instantiate $m))\n"))
        .collect();
    let greedy = wat::parse_str(format!("(component (core module $m) {instances})")).unwrap();
    std::fs::write(file.path(), greedy).unwrap();
    let (ok, _, err) = cli(
        &weir,
        Some(TOKEN),
        &["plugin", "push", file.path().to_str().unwrap()],
    );
    assert!(
        !ok && err.contains("422") && err.contains("over this host's limits"),
        "{err}"
    );
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.1.0");
}

/// Python and TypeScript plugins go through the lifecycle as a Rust one does: pushed (an
/// interpreter's 12 to 19 MB, through the control topic in parts) with the shared fixtures
/// for the gate; promoted from Rust to Python and from Python to TypeScript while devices
/// publish, then rolled back while they publish: every message once, in order, each switch
/// once. Then the TypeScript one is shadowed beside the live Python one: the same outcome
/// for every message.
#[test]
fn python_and_typescript_plugins_are_pushed_promoted_and_rolled_back_under_load() {
    let p = unique("langlife");
    // One compile per interpreter component: the push compiles, the promote's gate loads it
    // from the cache.
    let cache = tempfile::tempdir().unwrap();
    let weir = Weir::start(
        &config(&p),
        &[
            ("WEIR_NO_CACHE", "0"),
            ("WEIR_CACHE_DIR", cache.path().to_str().unwrap()),
        ],
    );
    let fixtures = root().join("plugins/thermostat/fixtures");
    let push = |file: &str| {
        let wasm = plugins_dir().join(file);
        let (ok, out, err) = cli(
            &weir,
            None,
            &[
                "plugin",
                "push",
                wasm.to_str().unwrap(),
                "--fixtures",
                fixtures.to_str().unwrap(),
            ],
        );
        assert!(ok, "{file}: {err}");
        let sha = json(&out)["sha256"].as_str().unwrap().to_owned();
        assert_eq!(
            sha,
            hex::encode(Sha256::digest(std::fs::read(&wasm).unwrap()))
        );
        sha
    };
    let python = push("python/thermostat-py-1.0.0.wasm");
    let typescript = push("typescript/thermostat-ts-1.0.0.wasm");
    let rust = sha256_file("thermostat@1.0.0");

    // Each change under its own load; the readings of each load follow the last's.
    let devices = 4;
    let mut first = 0;
    let mut under_load = |args: &[&str], old: &str, new: &str| {
        let load = Load::start_from(&p, &format!("{p}-pub{first}"), devices, first);
        load.wait_sent(300);
        let (ok, _, err) = cli(&weir, None, args);
        assert!(ok, "{args:?}: {err}");
        let (end, records) = load.finish_after(300, &p, devices);
        assert_eq!(records.len(), end * devices, "every message once");
        check_cutover_from(&records, devices, first..end, old, new);
        first = end;
    };
    under_load(
        &["plugin", "promote", "thermostats", "thermostat-py@1.0.0"],
        &rust,
        &python,
    );
    under_load(
        &["plugin", "promote", "thermostats", "thermostat-ts@1.0.0"],
        &python,
        &typescript,
    );
    under_load(&["plugin", "rollback", "thermostats"], &typescript, &python);
    assert_eq!(running(&weir, "thermostats"), "thermostat-py@1.0.0");

    // Shadowed beside the live Python plugin on traffic of every shape: the same outcome
    // for every message, the same record bytes for every reading.
    let shapes = [
        r#"{"ts":1,"temp_c":21.5}"#,
        r#"{"ts":1,"temperature":{"value":-39.973,"unit":"F"}}"#,
        r#"{"ts":1,"temperature":{"value":31.999,"unit":"F"}}"#,
        r#"{"ts":1,"temperature":{"value":294.65,"unit":"K"}}"#,
        r#"{"heartbeat":true}"#,
        "not json",
    ];
    let (r, _) = shadow_40(&weir, &p, "thermostat-ts@1.0.0", &shapes);
    assert_eq!(r["messages"], 40, "{r}");
    assert_eq!(r["identical"], 40, "{r}");
}

#[test]
fn the_pin_survives_a_restart_and_rolls_back() {
    let p = unique("pin");
    let weir = Weir::start(&config(&p), &[]);
    let wasm = plugins_dir().join("thermostat-1.1.0.wasm");
    let wasm = wasm.to_str().unwrap();
    // 1.0.0's fixtures do not hold for 1.1.0 (its records gain source_unit): the gate
    // refuses and nothing changes.
    let old_fixtures = root().join("plugins/thermostat/fixtures");
    let (ok, _, err) = cli(
        &weir,
        None,
        &[
            "plugin",
            "push",
            wasm,
            "--fixtures",
            old_fixtures.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &weir,
        None,
        &["plugin", "promote", "thermostats", "thermostat@1.1.0"],
    );
    assert!(
        !ok && err.contains("422") && err.contains("fixture line 1"),
        "{err}"
    );
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.0.0");
    // Fixtures written from 1.1.0's own output pass.
    let fixtures = tempfile::tempdir().unwrap();
    let input = old_fixtures.join("input.jsonl");
    std::fs::copy(&input, fixtures.path().join("input.jsonl")).unwrap();
    let expected = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["transform", "--plugin", wasm, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(expected.status.success());
    std::fs::write(fixtures.path().join("expected.jsonl"), &expected.stdout).unwrap();
    let (ok, _, err) = cli(
        &weir,
        None,
        &[
            "plugin",
            "push",
            wasm,
            "--fixtures",
            fixtures.path().to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &weir,
        None,
        &["plugin", "promote", "thermostats", "thermostat@1.1.0"],
    );
    assert!(ok, "{err}");
    let dir = weir.kill();
    let weir = Weir::restart(dir, &[]);
    assert_eq!(
        running(&weir, "thermostats"),
        "thermostat@1.1.0",
        "the control topic's pin outlives weir.toml's"
    );

    // 1.1.0 emits Kelvin readings that 1.0.0 rejects; after the rollback they quarantine.
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let kelvin = r#"{"ts":1,"temperature":{"value":294.65,"unit":"K"}}"#;
    publisher.publish(&format!("{p}/plant/1/thermostat/k1"), kelvin, &[]);
    publisher.flush();
    assert_eq!(
        count(&format!("{p}.thermostat"), 1, Duration::from_secs(60)),
        1
    );
    let (ok, out, err) = cli(&weir, None, &["plugin", "rollback", "thermostats"]);
    assert!(ok, "{err}");
    assert_eq!(
        json(&out)["to"]["sha256"],
        sha256_file("thermostat@1.0.0").as_str()
    );
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.0.0");
    publisher.publish(&format!("{p}/plant/1/thermostat/k2"), kelvin, &[]);
    publisher.flush();
    let q = consume(
        &format!("{p}.quarantine"),
        1,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].header("weir.error.code"), "reading.unit");
    // Back at the first pin: nothing further to roll back to.
    let (ok, _, err) = cli(&weir, None, &["plugin", "rollback", "thermostats"]);
    assert!(
        !ok && err.contains("409") && err.contains("nothing to roll back"),
        "{err}"
    );
    // The restarted process started on 1.1.0, so its only cutover is the rollback's.
    let (_, actions) = history(&weir, None, "thermostats");
    assert_eq!(actions, ["promote", "rollback", "cutover"]);
}

/// Process `n` of several on one `$share` subscription of `p`'s topics.
fn shared_config(p: &str, n: usize) -> String {
    config(p)
        .replace(
            &format!("subscriptions = [\"{p}/#\"]"),
            &format!("subscriptions = [\"$share/{p}/{p}/#\"]"),
        )
        .replace(
            &format!("client_id = \"{p}-weir\""),
            &format!("client_id = \"{p}-weir{n}\""),
        )
}

#[test]
fn two_processes_on_a_shared_subscription_converge() {
    let p = unique("share");
    let shared = |n: usize| shared_config(&p, n);
    let a = Weir::start(&shared(1), &[]);
    let b = Weir::start(&shared(2), &[]);
    let devices = 4;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(400);
    let (ok, _, err) = cli(
        &a,
        None,
        &["plugin", "promote", "thermostats", "thermostat@1.1.0"],
    );
    assert!(ok, "{err}");
    wait_running(&b, "thermostats", "thermostat@1.1.0");
    let (rounds, records) = load.finish_after(400, &p, devices);
    let total = rounds * devices;
    // Each message once (the broker gives each to one of the two), each with one version.
    let seen = readings(&records);
    let mut versions: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *versions
            .entry(r.header("weir.plugin").to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), total, "nothing lost");
    assert!(seen.values().all(|n| *n == 1), "nothing duplicated");
    assert!(versions.contains_key("thermostat@1.1.0"), "{versions:?}");
    // Both processes recorded their own cutover.
    let (entries, _) = history(&b, None, "thermostats");
    // Every entry was applied under the deployment's own key, named from the signature.
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["signer"] == "self"),
        "{entries}"
    );
    let cutovers: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "cutover")
        .map(|a| a["cutover"]["process"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        cutovers.contains(&format!("{p}-weir1")) && cutovers.contains(&format!("{p}-weir2")),
        "{cutovers:?}"
    );
}

/// `weir_acked_total` of a process.
fn acked(weir: &Weir) -> f64 {
    weir.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("weir_acked_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Three processes on one shared subscription; one is killed (SIGKILL) mid-stream. The
/// other two take the whole stream while it is down, a promote made meanwhile reaches every
/// process through the control topic (the killed one when it comes back), and once it is
/// back under its client id its session's unacknowledged messages arrive: nothing is lost.
#[test]
fn three_processes_absorb_one_killed_and_lose_nothing() {
    let p = unique("three");
    let shared = |n: usize| shared_config(&p, n);
    let a = Weir::start(&shared(1), &[]);
    let b = Weir::start(&shared(2), &[]);
    let c = Weir::start(&shared(3), &[]);
    let devices = 6;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(600);
    for w in [&a, &b, &c] {
        wait_until(
            "every process gets a share",
            Duration::from_secs(30),
            String::new,
            || acked(w) > 0.0,
        );
    }
    let b_dir = b.kill();
    let before = acked(&a) + acked(&c);
    let sent_at_kill = load.sent.load(Ordering::Relaxed);
    let (ok, _, err) = cli(
        &a,
        None,
        &["plugin", "promote", "thermostats", "thermostat@1.1.0"],
    );
    assert!(ok, "{err}");
    wait_running(&c, "thermostats", "thermostat@1.1.0");
    load.wait_sent(sent_at_kill + 900);
    // While b is down, a and c take what is published: nearly all of it, not two thirds.
    let published = (load.sent.load(Ordering::Relaxed) - sent_at_kill) as f64;
    let absorbed = || acked(&a) + acked(&c) - before;
    wait_until(
        "a and c acknowledge nearly all that is published while b is down",
        Duration::from_secs(30),
        || format!("{} of the {published} published", absorbed()),
        || absorbed() >= 0.9 * published,
    );
    let b = Weir::restart(b_dir, &[]);
    wait_running(&b, "thermostats", "thermostat@1.1.0");
    let (rounds, records) = load.finish_after(300, &p, devices);
    let seen = readings(&records);
    assert_eq!(
        seen.len(),
        rounds * devices,
        "nothing lost (a message b wrote but did not acknowledge may come twice)"
    );
    assert!(acked(&b) > 0.0, "b is back in the group");
}

/// Run `weir plugin shadow thermostats CANDIDATE --messages 40` while devices publish
/// `shapes` round after round; the shadow's report, and the rounds published.
fn shadow_40(weir: &Weir, p: &str, candidate: &str, shapes: &[&str]) -> (serde_json::Value, usize) {
    let (admin, candidate) = (weir.admin.clone(), candidate.to_owned());
    let shadow = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["plugin", "shadow", "thermostats", &candidate])
            .args(["--messages", "40", "--json", "--admin", &admin])
            .env_remove("WEIR_ADMIN_TOKEN")
            .output()
            .unwrap()
    });
    let mut publisher = Publisher::new(&format!("{p}-shadow"));
    let start = Instant::now();
    let mut round = 0;
    while !shadow.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "shadow never finished"
        );
        for payload in shapes {
            publisher.publish(&format!("{p}/plant/1/thermostat/s{round}"), *payload, &[]);
        }
        publisher.flush();
        round += 1;
        // The devices' pace: a round every 50 ms until the shadow has its 40.
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = shadow.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (json(&String::from_utf8_lossy(&out.stdout)), round)
}

#[test]
fn shadow_reports_kelvin_as_live_rejected_and_publishes_nothing() {
    let p = unique("shadow");
    let weir = Weir::start(&config(&p), &[]);
    let round = [
        r#"{"ts":1,"temp_c":21.5}"#,
        r#"{"ts":1,"temperature":{"value":70.7,"unit":"F"}}"#,
        r#"{"ts":1,"temperature":{"value":294.65,"unit":"K"}}"#,
        r#"{"heartbeat":true}"#,
        "not json",
    ];
    let (r, rounds) = shadow_40(&weir, &p, "thermostat@1.1.0", &round);
    assert_eq!(r["messages"], 40, "{r}");
    assert_eq!(r["complete"], true);
    let n = |k: &str| r[k].as_u64().unwrap();
    assert_eq!(
        n("identical") + n("different") + n("live_rejected"),
        40,
        "1.1.0 fails and rejects nothing 1.0.0 accepts: {r}"
    );
    assert_eq!(n("candidate_rejected") + n("candidate_failed"), 0, "{r}");
    // Kelvin: rejected live, emitted by the candidate. Readings: different (the new
    // field). Heartbeats and malformed payloads: identical.
    assert!(
        n("live_rejected") >= 6 && n("different") >= 12 && n("identical") >= 12,
        "{r}"
    );
    let examples = r["examples"].as_array().unwrap();
    let kelvin = examples
        .iter()
        .find(|e| e["live"]["outcome"] == "reject")
        .expect("a Kelvin example");
    assert_eq!(kelvin["live"]["code"], "reading.unit");
    assert_eq!(kelvin["candidate"]["records"][0]["source_unit"], "K");
    let changed = examples
        .iter()
        .find(|e| e["live"]["outcome"] == "emit")
        .expect("a different record");
    let fields: Vec<&str> = changed["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["source_unit"], "{changed}");
    assert!(changed["diff"][0].get("live").is_none());

    // Only the live version published: two records and two quarantined per round.
    let records = consume(
        &format!("{p}.thermostat"),
        2 * rounds,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(records.len(), 2 * rounds);
    assert!(
        records
            .iter()
            .all(|r| r.header("weir.plugin") == "thermostat@1.0.0")
    );
    assert_eq!(
        count(
            &format!("{p}.quarantine"),
            2 * rounds,
            Duration::from_secs(60)
        ),
        2 * rounds
    );
}

/// Whoever can write the control topic, but holds no trusted signing key, changes nothing:
/// forged records written straight into it with an independent Kafka client (an unsigned
/// pin, a pin signed by a stranger's key, a pin naming the trusted key with a signature it
/// did not make, an unsigned upload) are counted and ignored, now and after a restart.
#[test]
fn forged_control_records_change_nothing() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p = unique("forge");
    let config = config(&p);
    let weir = Weir::start(&config, &[]);
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.0.0");

    let pin = serde_json::json!({
        "cohort": "thermostats",
        "plugin": {"name": "thermostat", "version": "1.1.0", "sha256": sha256_file("thermostat-1.1.0")},
        "previous": null, "rollback_to": [], "replaces": null,
        "at_ms": 1, "by": "ops",
    })
    .to_string();
    let upload = serde_json::json!({
        "name": "evil", "version": "6.6.6", "sha256": sha256_file("adversarial-0.1.0"),
        "size": 1, "schema": "\"string\"", "at_ms": 1, "by": "ops",
    })
    .to_string();
    let stranger = weir::signing::Signer::from_secret([7; 32]);
    let trusted = weir::signing::Signer::load_or_create(&signing_key()).unwrap();
    let signed = |s: &weir::signing::Signer, key: &str, value: &str| {
        let [signer, signature] = s.sign(key, value.as_bytes());
        (signer.1, signature.1)
    };
    let (_, stranger_sig) = signed(&stranger, "pin/thermostats", &pin);
    // (key, value, (signer, signature) headers)
    type Forged = (String, String, Option<(String, String)>);
    let forged: Vec<Forged> = vec![
        ("pin/thermostats".into(), pin.clone(), None),
        (
            "pin/thermostats".into(),
            pin.clone(),
            Some(signed(&stranger, "pin/thermostats", &pin)),
        ),
        (
            "pin/thermostats".into(),
            pin.clone(),
            Some((trusted.public().to_owned(), stranger_sig)),
        ),
        (
            format!("upload/evil@6.6.6/{}", sha256_file("adversarial-0.1.0")),
            upload,
            None,
        ),
    ];
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let topic = format!("{p}.control");
    for (key, value, signature) in &forged {
        let mut record = BaseRecord::to(&topic).key(key).payload(value).partition(0);
        if let Some((signer, sig)) = signature {
            record = record.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: weir::signing::SIGNER_HEADER,
                        value: Some(signer),
                    })
                    .insert(Header {
                        key: weir::signing::SIGNATURE_HEADER,
                        value: Some(sig),
                    }),
            );
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let rejected = |weir: &Weir| {
        weir.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("weir_control_entries_rejected_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_until(
        "every forged record is seen and rejected",
        Duration::from_secs(30),
        || weir.metrics(),
        || rejected(&weir) >= forged.len() as f64,
    );
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.0.0");
    let (ok, out, err) = cli(&weir, Some(TOKEN), &["plugin", "list"]);
    assert!(ok, "{err}");
    assert!(!out.contains("evil"), "{out}");
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("not signed"), "{log}");
    assert!(log.contains("signer is not trusted"), "{log}");
    assert!(log.contains("does not match"), "{log}");

    // A restart reads the topic from the start: still nothing applied.
    let weir = Weir::start(&config, &[]);
    assert_eq!(running(&weir, "thermostats"), "thermostat@1.0.0");
    assert_eq!(rejected(&weir), forged.len() as f64);
}
