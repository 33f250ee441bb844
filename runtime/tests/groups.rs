//! Isolation groups against real services: a healthy group beside a group whose plugin
//! spins to its deadline on every message, and beside a group whose devices storm (held to
//! its `max_messages_per_s`). The healthy group's acknowledgements must not wait on the
//! other one: its throughput and p99 arrival-to-PUBACK latency beside it stay within 10 %
//! of running alone.
//!
//! As tests these assert behaviour: the healthy group is served (every message written and
//! acknowledged), the spinning one is penalised and quarantined, the storm is held under
//! its limit, each group's threads run at its priority. The figures (throughput and p99
//! beside the neighbour against alone, the storm's rate, a spinner's cost) depend on a
//! shared machine's noise: they are printed, and held to their bounds only as a benchmark
//! (`scripts/bench-isolation`, which sets `WEIR_ISOLATION_BOUNDS=1`).
//!
//! The test bed's Kafka is shared by the tests of this file one at a time (`MEASURING`):
//! each partition is appended on its own, so the neighbour's writes do not queue in front
//! of the healthy group's inside the broker.

mod bed;

use bed::*;
use std::time::{Duration, Instant};

/// The tests measure latency: one at a time, or each would be the other's neighbour.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold a timing figure to its bound (as a benchmark, `WEIR_ISOLATION_BOUNDS` set), or
/// only report it (as a test): machine noise must not fail the suite.
fn bound(held: bool, figure: String) {
    let benchmark = std::env::var_os("WEIR_ISOLATION_BOUNDS").is_some();
    eprintln!("  bound {}: {figure}", if held { "held" } else { "missed" });
    assert!(held || !benchmark, "{figure}");
}

/// Offered load of the healthy group, messages per second, and how long each phase lasts.
const RATE: usize = 1000;
const PHASE: Duration = Duration::from_secs(4);
/// The broken cohort's budget per message; each of its messages costs up to twice that
/// (its batch times out, then each message runs alone to its deadline).
const SPIN_MS: u64 = 20;
/// A spinning message every this many 10 ms ticks: a little faster than the penalised
/// worker takes them (it rests seven times as long as it spun, so one alone costs 160 ms
/// and one of a batch up to 320 ms), so that it is at work through every phase, with a
/// backlog of a batch or two.
const SPIN_EVERY: usize = 20;

/// The healthy group's part of the config; `other` adds the neighbour's group and cohort.
fn config(p: &str, kafka: &str, other: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{mqtt}"
client_id = "{p}-weir"
keep_alive_s = 10
[kafka]
bootstrap = "{kafka}"
[registry]
url = "{registry}"
[output]
quarantine_topic = "{p}.quarantine"
shutdown_timeout_s = 5
[admin]
listen = "127.0.0.1:0"
[plugins]
dir = "{dir}"
control_topic = "{p}.control"

[[group]]
name = "healthy"
subscriptions = ["{p}/healthy/#"]

[[cohort]]
name = "thermostats"
group = "healthy"
topic = "{p}/healthy/plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "{p}.thermostat"
key = "{{topic[5]}}"
{other}"#,
        mqtt = mqtt_url(),
        registry = registry(),
        dir = plugins_dir().display(),
    )
}

/// What a test runs against: weir, and the broker's address.
struct Bed {
    weir: Weir,
    kafka: String,
}

/// Create the test's topics (the healthy group's, the neighbour's `other_topic` and the
/// quarantine; one partition each) and start weir with the neighbour's config `other`.
fn start(p: &str, other_topic: &str, other: &str) -> Bed {
    let kafka = kafka();
    create_topics(
        &kafka,
        &[
            &format!("{p}.thermostat"),
            &format!("{p}.{other_topic}"),
            &format!("{p}.quarantine"),
        ],
    );
    Bed {
        weir: Weir::start(&config(p, &kafka, other), &[]),
        kafka,
    }
}

/// A metric's value (0 when absent).
fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn healthy_acked(w: &Weir) -> f64 {
    metric(&w.metrics(), r#"weir_ack_seconds_count{group="healthy"} "#)
}

/// What one phase measured for the healthy group.
struct Phase {
    /// Messages acknowledged per second, first publish to last PUBACK.
    throughput: f64,
    /// Its ack-latency buckets before and after.
    before: Vec<(f64, f64)>,
    after: Vec<(f64, f64)>,
    /// What the neighbour did during the phase (see [`Neighbour::end`]).
    other: f64,
}

/// What runs beside the healthy group in half of the phases.
trait Neighbour {
    /// What it is, for messages.
    fn name(&self) -> &'static str;
    /// Make it ready before the first phase (its instances made, its producer connected),
    /// so that its start-up does not fall into a phase.
    fn warm_up(&mut self, weir: &Weir);
    /// Before a phase beside it.
    fn begin(&mut self, weir: &Weir);
    /// Every 10 ms of a phase beside it.
    fn tick(&mut self) {}
    /// After the phase (the healthy group's messages acknowledged): a measure of the work
    /// the neighbour did during it.
    fn end(&mut self, weir: &Weir) -> f64;
    /// Wait until the neighbour is quiet again, before a phase alone.
    fn settle(&mut self, weir: &Weir);
}

/// The healthy group's results: median throughput alone and beside, each phase's p99 (ms,
/// in order), and each phase beside's neighbour measure.
struct Compared {
    tp_alone: f64,
    tp_beside: f64,
    p99s_alone: Vec<f64>,
    p99s_beside: Vec<f64>,
    other: Vec<f64>,
}

/// The median: one phase disturbed by something else on the machine (the broker's tail,
/// another process) does not decide.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

/// Run the healthy group at [`RATE`] through 8 alternating phases, half of them beside
/// `other`, and check that nothing of the healthy group's was lost.
fn compare(p: &str, kafka: &str, weir: &Weir, other: &mut dyn Neighbour) -> Compared {
    let mut healthy = Publisher::new(&format!("{p}-pub-healthy"));
    let mut sent = 0usize;
    // Warm up: the healthy path connected to Kafka, its instances made.
    for i in 0..200 {
        healthy.publish(
            &format!("{p}/healthy/plant/p1/thermostat/t-{}", i % 100),
            bench_payload(i),
            &[],
        );
        sent += 1;
    }
    healthy.flush();
    wait_until(
        "warm-up acknowledged",
        Duration::from_secs(60),
        String::new,
        || healthy_acked(weir) >= sent as f64,
    );
    other.warm_up(weir);

    // A measurement whose phases alone disagree among themselves by more than half was
    // disturbed by something else on the machine (another process, the host's other
    // guests): it says nothing about the neighbour, so it is taken again, at most twice.
    let mut attempt = 1;
    loop {
        let compared = measure(p, weir, other, &mut healthy, &mut sent);
        compared.report(other.name());
        let alone = &compared.p99s_alone;
        let spread = alone.iter().cloned().fold(0.0, f64::max)
            / alone.iter().cloned().fold(f64::INFINITY, f64::min);
        if spread <= MAX_SPREAD || attempt == 3 {
            nothing_lost(weir, kafka, "thermostats", &format!("{p}.thermostat"), sent);
            return compared;
        }
        eprintln!(
            "  the phases alone differ {spread:.2}x among themselves: the machine was disturbed; measuring again"
        );
        attempt += 1;
    }
}

/// Most the p99s of the phases alone may differ among themselves (largest over smallest)
/// for a measurement to count: quiet runs here differ up to ~1.25x.
const MAX_SPREAD: f64 = 1.5;

/// One measurement: alternating phases alone and beside `other`, the healthy group's
/// messages counted in `sent`.
fn measure(
    p: &str,
    weir: &Weir,
    other: &mut dyn Neighbour,
    healthy: &mut Publisher,
    sent: &mut usize,
) -> Compared {
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    // Alternate, so that drift on a shared machine falls on both sides.
    for with in [
        false, true, true, false, false, true, true, false, false, true, true, false,
    ] {
        if with {
            other.begin(weir);
        }
        let before = buckets(&weir.metrics(), "weir_ack_seconds", r#"group="healthy""#);
        let started = Instant::now();
        let per_tick = RATE / 100;
        let ticks = (PHASE.as_millis() / 10) as usize;
        for t in 0..ticks {
            for k in 0..per_tick {
                let i = *sent + k;
                healthy.publish(
                    &format!("{p}/healthy/plant/p1/thermostat/t-{}", i % 100),
                    bench_payload(i),
                    &[],
                );
            }
            *sent += per_tick;
            if with {
                other.tick();
            }
            let next = started + Duration::from_millis(10 * (t as u64 + 1));
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        wait_until(
            "the healthy group's messages acknowledged",
            Duration::from_secs(60),
            String::new,
            || healthy_acked(weir) >= *sent as f64,
        );
        let elapsed = started.elapsed().as_secs_f64();
        let mut phase = Phase {
            throughput: (ticks * per_tick) as f64 / elapsed,
            before,
            after: buckets(&weir.metrics(), "weir_ack_seconds", r#"group="healthy""#),
            other: 0.0,
        };
        if with {
            phase.other = other.end(weir);
            // Back to "alone" only once the neighbour is quiet.
            other.settle(weir);
            beside.push(phase);
        } else {
            alone.push(phase);
        }
    }

    let p99s = |phases: &[Phase]| -> Vec<f64> {
        phases
            .iter()
            .map(|ph| quantile(&ph.before, &ph.after, 0.99) * 1e3)
            .collect()
    };
    let tp = |phases: &[Phase]| median(&phases.iter().map(|ph| ph.throughput).collect::<Vec<_>>());
    Compared {
        tp_alone: tp(&alone),
        tp_beside: tp(&beside),
        p99s_alone: p99s(&alone),
        p99s_beside: p99s(&beside),
        other: beside.iter().map(|ph| ph.other).collect(),
    }
}

/// Every message of `cohort` is a record in `topic`: counted by weir as written, and by
/// the topic's end offset (one partition, an idempotent producer).
fn nothing_lost(weir: &Weir, kafka: &str, cohort: &str, topic: &str, sent: usize) {
    let text = weir.metrics();
    assert_eq!(
        metric(
            &text,
            &format!("weir_records_total{{cohort=\"{cohort}\"}} ")
        ),
        sent as f64,
        "{}",
        text.lines()
            .filter(|l| l.starts_with("weir_quarantined_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(end_offset(kafka, topic), sent as i64);
}

impl Compared {
    /// The median p99 alone and beside, ms.
    fn p99(&self) -> (f64, f64) {
        (median(&self.p99s_alone), median(&self.p99s_beside))
    }

    fn report(&self, beside: &str) {
        let (p99_alone, p99_beside) = self.p99();
        eprintln!(
            "healthy group, median of {} phases each: alone {:.0} msg/s, p99 {p99_alone:.2} ms; beside {beside} {:.0} msg/s, p99 {p99_beside:.2} ms ({:+.1} %)",
            self.p99s_alone.len(),
            self.tp_alone,
            self.tp_beside,
            (p99_beside / p99_alone - 1.0) * 100.0
        );
        eprintln!(
            "  p99 per phase, ms: alone {:.2?}, beside {:.2?}",
            self.p99s_alone, self.p99s_beside
        );
    }

    /// The healthy group beside the other: its throughput within 10 % of alone, and its
    /// acks not held behind the other group (p99 within twice alone, where a shared worker
    /// or queue would add the other group's hundreds of milliseconds); bounds of the
    /// benchmark ([`bound`]). The finer figure, p99 within 10 % of alone, is reported
    /// only: a 2-core machine's noise moves a p99 of 16 ms by more than that between
    /// identical runs. Medians of six phases each, so that one disturbed phase does not
    /// decide.
    fn check(&self, beside: &str) {
        let (tp_alone, tp_beside) = (self.tp_alone, self.tp_beside);
        let (p99_alone, p99_beside) = self.p99();
        eprintln!(
            "  isolation figure: p99 beside {beside} is {:.2}x alone (target 1.10x: {})",
            p99_beside / p99_alone,
            if p99_beside <= 1.1 * p99_alone {
                "met"
            } else {
                "missed in this run"
            }
        );
        bound(
            tp_beside >= 0.9 * tp_alone,
            format!(
                "throughput {tp_beside:.0} beside {beside} vs {tp_alone:.0} msg/s alone (at least 0.9x)"
            ),
        );
        bound(
            p99_beside <= 2.0 * p99_alone,
            format!(
                "p99 {p99_beside:.2} ms beside {beside} vs {p99_alone:.2} ms alone, at most 2x (per phase: alone {:.2?}, beside {:.2?})",
                self.p99s_alone, self.p99s_beside
            ),
        );
    }
}

/// A group whose plugin spins to its deadline on every message.
struct Spinning {
    p: String,
    publisher: Publisher,
    sent: usize,
    ticks: usize,
    cpu_before: f64,
}

impl Spinning {
    fn send(&mut self) {
        let topic = format!("{}/broken/d{}", self.p, self.sent);
        self.publisher.publish(&topic, "loop", &[]);
        self.sent += 1;
    }
}

fn spin_seconds(w: &Weir) -> f64 {
    metric(
        &w.metrics(),
        r#"weir_transform_seconds_sum{cohort="spin"} "#,
    )
}

fn spin_quarantined(w: &Weir) -> f64 {
    metric(
        &w.metrics(),
        r#"weir_quarantined_total{cohort="spin",code="plugin.timeout",stage="transform"} "#,
    )
}

impl Neighbour for Spinning {
    fn name(&self) -> &'static str {
        "the spinning group"
    }

    fn warm_up(&mut self, weir: &Weir) {
        self.publisher
            .publish(&format!("{}/broken/warm", self.p), "loop", &[]);
        self.sent += 1;
        self.settle(weir);
    }

    fn begin(&mut self, weir: &Weir) {
        self.cpu_before = spin_seconds(weir);
        self.ticks = 0;
    }

    fn tick(&mut self) {
        if self.ticks.is_multiple_of(SPIN_EVERY) {
            self.send();
        }
        self.ticks += 1;
    }

    fn end(&mut self, weir: &Weir) -> f64 {
        spin_seconds(weir) - self.cpu_before
    }

    fn settle(&mut self, weir: &Weir) {
        wait_until(
            "the broken group's messages quarantined",
            Duration::from_secs(120),
            String::new,
            || spin_quarantined(weir) >= self.sent as f64,
        );
    }
}

#[test]
fn a_spinning_group_does_not_delay_a_healthy_groups_acks() {
    let _one = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let p = unique("iso");
    let broken = format!(
        r#"
[[group]]
name = "broken"
subscriptions = ["{p}/broken/#"]
max_in_flight = 8

[[cohort]]
name = "spin"
group = "broken"
topic = "{p}/broken/#"
plugin = "adversarial@0.1.0"
output_topic = "{p}.spin"
plugin_time_ms = {SPIN_MS}
"#
    );
    let Bed { weir, kafka } = start(&p, "spin", &broken);
    let mut spinning = Spinning {
        publisher: Publisher::new(&format!("{p}-pub-broken")),
        p: p.clone(),
        sent: 0,
        ticks: 0,
        cpu_before: 0.0,
    };
    let c = compare(&p, &kafka, &weir, &mut spinning);
    c.check(spinning.name());
    eprintln!(
        "the broken plugin's time per phase beside it: {:.2?} s",
        c.other
    );
    // The broken group really was at work through every phase beside it: an eighth of
    // the phase is all a penalised worker takes.
    for s in &c.other {
        bound(
            *s >= 0.1 * PHASE.as_secs_f64(),
            format!("the broken plugin ran {s:.2} s of a {PHASE:?} phase (at least a tenth)"),
        );
    }
    // Every spinning message quarantined, none lost.
    assert_eq!(spin_quarantined(&weir), spinning.sent as f64);
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
    // Penalised: its worker went to the lowest CPU priority once its plugin overran.
    assert!(
        log.contains("ran past its CPU budget: its worker runs at the lowest CPU priority")
            && log.contains("lowered=true"),
        "the spinning group's worker was not penalised; weir's log:\n{log}"
    );
}

/// The storming group's threads — its I/O threads, its transform worker and its Kafka
/// producer's (librdkafka's and the event thread) — run at its `nice`, the healthy
/// group's at weir's own.
fn runs_at_its_own_priority(weir: &Weir) {
    let threads = thread_nice(weir.child.id());
    let at = |name: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, nice)| *nice)
            .collect()
    };
    // Relative to weir's own (the test may itself run niced).
    let own = at("weir")[0];
    let storm = (own + STORM_NICE).min(19);
    let all = format!("weir at {own}: {threads:?}");
    let niced = |name: &str| at(name).iter().filter(|n| **n == storm).count();
    assert!(
        !at("weir-io-storm").is_empty(),
        "no storm I/O thread: {all}"
    );
    assert!(at("weir-io-storm").iter().all(|n| *n == storm), "{all}");
    assert_eq!(at("weir-storm"), [storm], "{all}");
    assert!(!at("weir-io-healthy").is_empty(), "{all}");
    assert!(at("weir-io-healthy").iter().all(|n| *n == own), "{all}");
    assert_eq!(at("weir-healthy"), [own], "{all}");
    // Of the producers (one per group) and the control topic's consumer, only the
    // storming group's runs at its priority.
    assert!(at("rdk:main").len() >= 3, "{all}");
    assert_eq!(niced("rdk:main"), 1, "{all}");
    assert_eq!(at("weir-kafka-dr").len(), 2, "{all}");
    assert_eq!(niced("weir-kafka-dr"), 1, "{all}");
}

/// A group whose devices publish valid messages over three times faster than its rate limit
/// lets weir take them.
struct Storming {
    p: String,
    publisher: Publisher,
    sent: usize,
    acked_before: f64,
    started: Instant,
}

/// The storming devices' offered load, messages per 10 ms tick, and the rate limit of
/// their group, messages per second.
const STORM_PER_TICK: usize = 8;
const STORM_LIMIT: usize = 250;
/// The storming group's in-flight budget, and so its largest batch.
const STORM_IN_FLIGHT: usize = 64;
/// The storming group's CPU priority below weir's.
const STORM_NICE: i32 = 10;

fn storm_acked(w: &Weir) -> f64 {
    metric(&w.metrics(), r#"weir_ack_seconds_count{group="storm"} "#)
}

impl Neighbour for Storming {
    fn name(&self) -> &'static str {
        "the storming group"
    }

    fn warm_up(&mut self, weir: &Weir) {
        self.tick();
        self.settle(weir);
    }

    fn begin(&mut self, weir: &Weir) {
        self.acked_before = storm_acked(weir);
        self.started = Instant::now();
    }

    fn tick(&mut self) {
        for _ in 0..STORM_PER_TICK {
            let i = self.sent;
            self.publisher.publish(
                &format!("{}/storm/plant/p2/thermostat/t-{}", self.p, i % 100),
                bench_payload(i),
                &[],
            );
            self.sent += 1;
        }
    }

    fn end(&mut self, weir: &Weir) -> f64 {
        let acked = storm_acked(weir) - self.acked_before;
        let elapsed = self.started.elapsed().as_secs_f64();
        // Held to its limit: at most the rate over the phase, plus one batch.
        assert!(
            acked <= STORM_LIMIT as f64 * elapsed + STORM_IN_FLIGHT as f64,
            "the storming group took {acked} messages in {elapsed:.2} s, limit {STORM_LIMIT}/s"
        );
        acked / elapsed
    }

    fn settle(&mut self, weir: &Weir) {
        // The backlog waited at the broker; it drains at the limit.
        self.publisher.flush();
        wait_until(
            "the storming group's backlog acknowledged",
            Duration::from_secs(120),
            String::new,
            || storm_acked(weir) >= self.sent as f64,
        );
    }
}

#[test]
fn a_storming_group_is_held_to_its_rate_and_does_not_delay_a_healthy_groups_acks() {
    let _one = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let p = unique("storm");
    let storm = format!(
        r#"
[[group]]
name = "storm"
subscriptions = ["{p}/storm/#"]
max_in_flight = {STORM_IN_FLIGHT}
max_messages_per_s = {STORM_LIMIT}
nice = {STORM_NICE}

[[cohort]]
name = "storm"
group = "storm"
topic = "{p}/storm/plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "{p}.storm"
key = "{{topic[5]}}"
"#
    );
    let Bed { weir, kafka } = start(&p, "storm", &storm);
    runs_at_its_own_priority(&weir);
    let mut storming = Storming {
        publisher: Publisher::new(&format!("{p}-pub-storm")),
        p: p.clone(),
        sent: 0,
        acked_before: 0.0,
        started: Instant::now(),
    };
    let c = compare(&p, &kafka, &weir, &mut storming);
    eprintln!(
        "the storming group, offered {} msg/s, limited to {STORM_LIMIT}: took {:.0?} msg/s in the phases beside the healthy one",
        STORM_PER_TICK * 100,
        c.other
    );
    c.check(storming.name());
    // The storm really was at its limit through each phase (its backlog kept it busy).
    for r in &c.other {
        bound(
            *r >= 0.8 * STORM_LIMIT as f64,
            format!(
                "the storming group took {r:.0} msg/s (at least 0.8 of its limit, {STORM_LIMIT})"
            ),
        );
    }
    let text = weir.metrics();
    assert!(
        metric(
            &text,
            r#"weir_group_throttled_seconds_total{group="storm"} "#
        ) > 0.0,
        "the storming group was never held back"
    );
    // Nothing of the storm lost either: every message a record, in its topic.
    nothing_lost(&weir, &kafka, "storm", &format!("{p}.storm"), storming.sent);
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

/// Healthy messages drained from a backlog on the adversarial cohort, with `spinners`
/// messages that spin to their deadline spread among them: the time from the first
/// acknowledgement to the last, seconds. `weir` is stopped first, so the backlog waits in
/// its session, and started again on it.
fn drain_with_spinners(
    weir: Weir,
    p: &str,
    healthy: usize,
    spinners: usize,
    published: &mut usize,
) -> (Weir, f64) {
    let dir = weir.terminate();
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let every = healthy / (spinners + 1);
    for i in 0..healthy {
        if spinners > 0 && i > 0 && i % every == 0 && i / every <= spinners {
            publisher.publish(&format!("{p}/chaos/spin{i}"), "loop", &[]);
        }
        publisher.publish(&format!("{p}/chaos/d{}", i % 50), format!("ok-{i}"), &[]);
        *published += 1;
    }
    publisher.flush();
    // Not waiting for readiness: the backlog starts draining before it.
    let weir = Weir::relaunch(dir, &[]);
    let total = (healthy + spinners) as f64;
    let acked = |w: &Weir| metric(&w.metrics(), "weir_acked_total ");
    let mut first = None;
    let start = Instant::now();
    loop {
        let n = acked(&weir);
        if n > 0.0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the backlog was not drained: {n} of {total} acknowledged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let text = weir.metrics();
    eprintln!(
        "  phase: received {} (redelivered {}), acknowledged {}",
        metric(&text, "weir_received_total "),
        metric(&text, "weir_redelivered_total "),
        metric(&text, "weir_acked_total ")
    );
    weir.wait_ready(Duration::from_secs(30));
    (weir, took)
}

/// A message that spins to its deadline now and then costs the healthy messages of its
/// own cohort little: its batch runs past a budget scaled to the plugin's measured cost,
/// is re-run message by message, and the worker rests after. The time each spinning
/// message adds to draining a backlog is bounded (before the batch budget, one cost its
/// group about 10 s: 64 messages' budgets and seven times that in rest), so a spinner
/// every 10 s leaves the cohort most of its throughput.
#[test]
fn an_intermittent_spinner_costs_its_own_cohort_little() {
    let _one = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let p = unique("samecohort");
    let kafka = kafka();
    create_topics(&kafka, &[&format!("{p}.chaos"), &format!("{p}.quarantine")]);
    let config = format!(
        r#"
[mqtt]
url = "{mqtt}"
client_id = "{p}-weir"
subscriptions = ["{p}/#"]
keep_alive_s = 10
[kafka]
bootstrap = "{kafka}"
[registry]
url = "{registry}"
[output]
quarantine_topic = "{p}.quarantine"
[admin]
listen = "127.0.0.1:0"
[plugins]
dir = "{dir}"
control_topic = "{p}.control"
[[cohort]]
name = "chaos"
topic = "{p}/chaos/#"
plugin = "adversarial@0.1.0"
output_topic = "{p}.chaos"
plugin_time_ms = {SPIN_MS}
"#,
        mqtt = mqtt_url(),
        registry = registry(),
        dir = plugins_dir().display(),
    );
    let mut weir = Weir::start(&config, &[]);
    let (healthy, spinners) = (3000, 6);
    let mut published = 0;
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    // Alternate, so that drift on a shared machine falls on both sides.
    for with in [false, true, false, true, false, true] {
        let (w, took) = drain_with_spinners(
            weir,
            &p,
            healthy,
            if with { spinners } else { 0 },
            &mut published,
        );
        weir = w;
        if with { &mut beside } else { &mut alone }.push(took);
    }
    let (alone, beside) = (median(&alone), median(&beside));
    let per_spinner = (beside - alone).max(0.0) / spinners as f64;
    eprintln!(
        "draining {healthy} healthy messages: {alone:.2} s alone, {beside:.2} s with {spinners} spinners among them: {per_spinner:.2} s per spinning message ({:.0} % of the cohort's throughput kept with one every 10 s)",
        100.0 * 10.0 / (10.0 + per_spinner)
    );
    bound(
        per_spinner < 1.5,
        format!("each spinning message cost its cohort {per_spinner:.2} s (under 1.5 s)"),
    );
    // Every healthy message is a record (none lost; the restarts between phases may
    // redeliver a few, at least once), every spinner quarantined.
    let written = end_offset(&kafka, &format!("{p}.chaos"));
    assert!(
        written >= published as i64,
        "{written} records for {published} healthy messages"
    );
    eprintln!(
        "{} duplicates over six restarts",
        written - published as i64
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}
