//! Scale-out slots against the real test bed: several `weir run` processes on one config
//! share its MQTT sessions (slots) through a Kafka consumer group. A process killed for
//! good, one joining, one paused past the group's session timeout, and scaling from one
//! to three and back, each under load: every message reaches Kafka.

mod bed;

use bed::*;
use std::time::{Duration, Instant};

/// Slots of the tests' deployments.
const SLOTS: usize = 6;

/// One deployment's config: `p`'s topics on a shared subscription, `SLOTS` slots, and a
/// short group session timeout so that a lost process's slots move quickly.
fn slotted(p: &str) -> String {
    config(p).replace(
        &format!("subscriptions = [\"{p}/#\"]"),
        &format!("subscriptions = [\"$share/{p}/{p}/#\"]\nslots = {SLOTS}\nslot_timeout_s = 4"),
    )
}

/// A metric's value summed over its label sets.
fn metric(weir: &Weir, name: &str) -> f64 {
    weir.metrics()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ', ',']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn held(weir: &Weir) -> usize {
    metric(weir, "weir_slots_held") as usize
}

/// Wait until the processes hold every slot between them, each at least one.
fn spread(ws: &[&Weir]) {
    wait_until(
        "the slots spread over every process",
        Duration::from_secs(60),
        String::new,
        || {
            let h: Vec<usize> = ws.iter().map(|w| held(w)).collect();
            h.iter().sum::<usize>() == SLOTS && h.iter().all(|n| *n > 0)
        },
    );
}

/// The thermostats cohort's slots in `weir cohort list --json`: each slot's holder, and
/// whether it is the process asked.
fn cohort_slots(weir: &Weir) -> Vec<(String, bool)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["cohort", "list", "--json", "--admin", &weir.admin])
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cohort"] == "thermostats")
        .unwrap();
    c["slots"]
        .as_array()
        .expect("slots listed")
        .iter()
        .map(|s| {
            (
                s["process"].as_str().unwrap().to_owned(),
                s["here"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Every (device, reading) published is in Kafka at least once.
fn nothing_lost(load: Load, more: usize, p: &str, devices: usize) -> usize {
    let (rounds, records) = load.finish_after(more, p, devices);
    let seen = readings(&records);
    let missing: Vec<_> = (0..devices)
        .flat_map(|d| (0..rounds).map(move |r| (format!("d{d}"), r as i64)))
        .filter(|k| !seen.contains_key(k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never reached Kafka, e.g. {missing:?}",
        rounds * devices - seen.len().min(rounds * devices),
        rounds * devices
    );
    records.len() - seen.len()
}

#[test]
fn a_process_killed_for_good_strands_nothing() {
    let p = unique("slotkill");
    let config = slotted(&p);
    let a = Weir::start(&config, &[]);
    let b = Weir::start(&config, &[]);
    let c = Weir::start(&config, &[]);
    spread(&[&a, &b, &c]);
    let devices = 6;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(600);
    wait_until(
        "b acknowledges messages",
        Duration::from_secs(30),
        String::new,
        || metric(&b, "weir_acked_total") > 0.0,
    );
    // Killed and never brought back: its sessions' backlogs must reach the others.
    drop(b.kill());
    let sent = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_sent(sent + 1200);
    wait_until(
        "a and c take the killed process's slots",
        Duration::from_secs(60),
        String::new,
        || held(&a) + held(&c) == SLOTS,
    );
    let dups = nothing_lost(load, 600, &p, devices);
    eprintln!("duplicates after one SIGKILL: {dups}");
}

#[test]
fn a_process_joining_takes_slots_and_nothing_is_lost() {
    let p = unique("slotjoin");
    let config = slotted(&p);
    let a = Weir::start(&config, &[]);
    wait_until(
        "a holds every slot",
        Duration::from_secs(30),
        String::new,
        || held(&a) == SLOTS,
    );
    let devices = 4;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(800);
    let b = Weir::start(&config, &[]);
    spread(&[&a, &b]);
    // Giving slots up cleanly leaves the first process ready (its other sessions are).
    a.wait_ready(Duration::from_secs(10));
    // `weir cohort list` says which process holds which slot, as Kafka's group does.
    wait_until(
        "cohort list shows both holders",
        Duration::from_secs(30),
        String::new,
        || {
            let slots = cohort_slots(&a);
            slots.len() == SLOTS
                && slots.iter().filter(|(_, here)| *here).count() == held(&a)
                && slots.iter().any(|(_, here)| !here)
        },
    );
    // Each process shows the group as it last described it, so the joiner's view may
    // trail the first's by a description.
    let list = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["cohort", "list", "--admin", &b.admin])
            .env_remove("WEIR_ADMIN_TOKEN")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(
        "the joiner's cohort list shows its slots and the other's",
        Duration::from_secs(30),
        list,
        || {
            let text = list();
            text.contains(" here; ") && text.contains(" at ")
        },
    );
    // Slots given up cleanly are not taken over: no session of a's was kicked.
    assert_eq!(metric(&a, "weir_mqtt_reconnects_total"), 0.0);
    let dups = nothing_lost(load, 800, &p, devices);
    eprintln!("duplicates after one process joined: {dups}");
}

#[test]
fn a_paused_process_does_not_take_its_slots_back() {
    let p = unique("slotstop");
    let config = slotted(&p);
    let a = Weir::start(&config, &[]);
    let b = Weir::start(&config, &[]);
    spread(&[&a, &b]);
    let devices = 4;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(400);
    signal(b.child.id(), "-STOP");
    // Past the session timeout Kafka gives b's slots to a, which connects under their
    // client ids (the broker closes b's frozen connections).
    wait_until(
        "a takes the paused process's slots",
        Duration::from_secs(60),
        String::new,
        || held(&a) == SLOTS,
    );
    let sent = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_sent(sent + 400);
    signal(b.child.id(), "-CONT");
    // b comes back as a new member: Kafka gives it slots again, which a releases cleanly.
    // Had b reconnected on its own, a's sessions would have been taken over (reconnects).
    spread(&[&a, &b]);
    let sent = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_sent(sent + 400);
    let log = b.log.lock().unwrap().clone();
    assert_eq!(
        metric(&a, "weir_mqtt_reconnects_total"),
        0.0,
        "a's sessions were taken over; b's log:\n{log}"
    );
    assert!(
        log.contains("scale-out slots lost"),
        "b learnt it lost its slots; its log:\n{log}"
    );
    nothing_lost(load, 400, &p, devices);
}

#[test]
fn scaling_from_one_to_three_and_back_loses_nothing() {
    let p = unique("slotscale");
    let config = slotted(&p);
    let a = Weir::start(&config, &[]);
    let devices = 4;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(400);
    let b = Weir::start(&config, &[]);
    let c = Weir::start(&config, &[]);
    spread(&[&a, &b, &c]);
    let sent = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_sent(sent + 800);
    // SIGTERM: each drains, disconnects and leaves the group; a takes their slots at
    // once, without waiting for the session timeout.
    let left = Instant::now();
    for w in [b, c] {
        let (status, log) = w.stop();
        assert!(status.success(), "{log}");
    }
    wait_until(
        "a holds every slot again",
        Duration::from_secs(30),
        String::new,
        || held(&a) == SLOTS,
    );
    eprintln!(
        "slots back at one process {:?} after the others left",
        left.elapsed()
    );
    nothing_lost(load, 800, &p, devices);
}

/// An isolation group has slots of its own (`<client_id>-<group>-<k>`, its own consumer
/// group): two processes share them, and one killed for good strands nothing of it.
#[test]
fn an_isolation_group_has_slots_of_its_own() {
    let p = unique("slotgroup");
    // Only the thermostats, in a group of their own; `[mqtt]` subscribes to nothing.
    let base = config(&p);
    let cohorts = base.find("[[cohort]]").unwrap();
    let fleet = base.find("[[cohort]]\nname = \"fleet\"").unwrap();
    let config = format!(
        "{}[[group]]\nname = \"plant\"\nsubscriptions = [\"$share/{p}/{p}/plant/#\"]\n{}group = \"plant\"\n",
        &base[..cohorts],
        &base[cohorts..fleet]
    )
    .replace(
        &format!("subscriptions = [\"{p}/#\"]"),
        &format!("slots = {SLOTS}\nslot_timeout_s = 4"),
    );
    let a = Weir::start(&config, &[]);
    let b = Weir::start(&config, &[]);
    let plant = |w: &Weir| metric(w, "weir_slots_held{group=\"plant\"}") as usize;
    wait_until(
        "the group's slots spread",
        Duration::from_secs(60),
        String::new,
        || plant(&a) + plant(&b) == SLOTS && plant(&a) > 0 && plant(&b) > 0,
    );
    let devices = 4;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(400);
    drop(b.kill());
    wait_until(
        "a takes the group's slots",
        Duration::from_secs(60),
        String::new,
        || plant(&a) == SLOTS,
    );
    nothing_lost(load, 400, &p, devices);
}
