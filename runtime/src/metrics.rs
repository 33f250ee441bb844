//! What weir has done and what it is waiting for, as Prometheus metrics (prometheus-client,
//! served as OpenMetrics text on the admin listener's `/metrics`), plus the readiness flags
//! behind `/readyz`.
//!
//! Label values are bounded: cohorts come from the config, quarantine codes from a fixed
//! list or from a plugin's checked rejection codes, at most [`MAX_PLUGIN_CODES`] distinct
//! ones per cohort (more are counted under `code="other"`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_sdk::codes::Code;

/// Distinct plugin rejection codes labelled per cohort; the rest count as `other`.
pub const MAX_PLUGIN_CODES: usize = 32;

/// A cohort label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CohortLabel {
    /// Cohort name (`-` for unrouted messages).
    pub cohort: String,
}

/// Cohort + quarantine code (+ stage).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabel {
    /// Cohort name (`-` for unrouted messages).
    pub cohort: String,
    /// Quarantine code.
    pub code: String,
    /// Stage.
    pub stage: String,
}

/// An isolation group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// Group name (`default` for cohorts that name none).
    pub group: String,
}

/// One isolation group's own series, handed to its session and its courier.
#[derive(Clone, Debug)]
pub struct GroupMetrics {
    /// The group's name.
    pub name: String,
    /// Its messages received and not yet acknowledged.
    pub in_flight: Gauge,
    /// Age of its oldest unacknowledged message, seconds.
    pub oldest_unacked_seconds: Gauge<f64, AtomicU64>,
    /// Its MQTT arrival to PUBACK written, seconds.
    pub ack_seconds: Latency,
    /// Time its lane held batches back to keep to its `max_messages_per_s`, seconds.
    pub throttled_seconds: Counter<f64, AtomicU64>,
    /// Scale-out slots it holds in this process.
    pub slots_held: Gauge,
    /// Slots it took or gave up.
    pub slot_changes: Counter,
    /// Every slot's holder (the whole deployment's), as last described.
    holders: Arc<Mutex<Vec<(u16, String)>>>,
    holder_family: Family<SlotLabel, Gauge>,
    ready: Gauge,
}

/// A scale-out slot and the process holding it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabel {
    /// The isolation group.
    pub group: String,
    /// The slot.
    pub slot: u16,
    /// The process holding it (its Kafka client id: `<client_id>@<host>:<pid>`).
    pub process: String,
}

impl GroupMetrics {
    /// Record which process holds each slot of the group's deployment.
    pub fn set_slot_holders(&self, mut holders: Vec<(u16, String)>) {
        holders.sort();
        let mut current = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        let label = |(slot, process): &(u16, String)| SlotLabel {
            group: self.name.clone(),
            slot: *slot,
            process: process.clone(),
        };
        for h in current.iter() {
            self.holder_family.remove(&label(h));
        }
        for h in &holders {
            self.holder_family.get_or_create(&label(h)).set(1);
        }
        *current = holders;
    }

    /// Which process holds each slot (empty without slots, or before the group was
    /// described).
    pub fn slot_holders(&self) -> Vec<(u16, String)> {
        self.holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The group's session is connected and every subscription granted (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }
}

/// A Kafka write kind that is being retried.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `record`, `quarantine`, `raw`.
    pub kind: String,
}

/// Every metric weir exports, and the readiness state.
pub struct Metrics {
    registry: Registry,
    /// Messages received from MQTT.
    pub received: Counter,
    /// Of those, redelivered by the broker (DUP set).
    pub redelivered: Counter,
    /// Of those, retained messages.
    pub retained: Counter,
    /// Exactly once: Kafka transactions committed.
    pub transactions_committed: Counter,
    /// Exactly once: Kafka transactions aborted (and written again, or given up when the
    /// session moved to another process).
    pub transactions_aborted: Counter,
    /// Exactly once: QoS 2 redeliveries of committed packet ids, answered and not written.
    pub duplicates_answered: Counter,
    /// PUBACKs written to the broker.
    pub acked: Counter,
    /// Messages received and not yet acknowledged.
    pub in_flight: Gauge,
    /// Age of the oldest unacknowledged message, seconds.
    pub oldest_unacked_seconds: Gauge<f64, AtomicU64>,
    /// Records published to governed topics, per cohort.
    pub records: Family<CohortLabel, Counter>,
    /// Messages quarantined, per cohort and code.
    pub quarantined: Family<QuarantineLabel, Counter>,
    /// Plugin call latency per batch, seconds.
    pub transform_seconds: Family<CohortLabel, Latency>,
    /// MQTT arrival to the message's writes being started (batching, transform and the
    /// wait for the courier), seconds.
    pub handover_seconds: Latency,
    /// Kafka enqueue-to-acknowledgement latency per message, seconds.
    pub produce_seconds: Latency,
    /// Hand-off to librdkafka to Kafka's answer read by the producer's event thread, per
    /// write: the part of `produce_seconds` that is librdkafka and the broker, seconds.
    /// At-least-once groups' producers (exactly-once sessions' are not counted yet).
    pub kafka_answer_seconds: Latency,
    /// MQTT arrival to PUBACK written, per group, seconds.
    pub ack_seconds: Family<GroupLabel, Latency>,
    /// Messages received and not yet acknowledged, per group.
    pub group_in_flight: Family<GroupLabel, Gauge>,
    /// Age of the oldest unacknowledged message, per group.
    pub group_oldest_unacked_seconds: Family<GroupLabel, Gauge<f64, AtomicU64>>,
    /// 1 when the group's MQTT session is connected and subscribed.
    pub group_ready: Family<GroupLabel, Gauge>,
    /// Time a group's lane held batches back to keep to its rate limit, seconds.
    pub group_throttled_seconds: Family<GroupLabel, Counter<f64, AtomicU64>>,
    /// Scale-out slots an isolation group's sessions hold in this process.
    pub group_slots_held: Family<GroupLabel, Gauge>,
    /// Slots this process took or gave up in rebalances, by group.
    pub group_slot_changes: Family<GroupLabel, Counter>,
    /// Which process holds each slot, as the slots group last described itself.
    pub slot_holder: Family<SlotLabel, Gauge>,
    /// MQTT connections made after the first.
    pub reconnects: Counter,
    /// Subscriptions the broker refused (SUBACK failure or QoS 0).
    pub subscriptions_refused: Counter,
    /// Kafka writes that failed and are being retried, per kind.
    pub write_retries: Family<KindLabel, Counter>,
    /// Writes currently stuck in a retry loop.
    pub stuck_writes: Gauge,
    /// Plugin calls waiting over a second for room in the host's full instance pool.
    pub plugin_instance_waits: Gauge,
    /// Time Kafka's brokers held weir's produce requests back under a quota, seconds.
    pub kafka_throttled_seconds: Counter<f64, AtomicU64>,
    /// Quarantined because the payload was too large (also in `quarantined`).
    pub oversize: Counter,
    /// Messages whose raw capture Kafka refused for good; their quarantine entry holds the
    /// original payload instead.
    pub raw_capture_refused: Counter,
    plugin_codes: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Every group's handle, for readiness and the overall oldest-unacknowledged age.
    groups: Mutex<Vec<GroupMetrics>>,
    /// Why Kafka cannot take weir's writes, by producer (each group has its own), as their
    /// last probes found; empty when every producer can write.
    kafka_problems: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency() -> Latency {
    // 100 µs .. ~52 s
    Latency::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Buckets for arrival-to-PUBACK, the latency an operator sets objectives on: four per
/// doubling (each ~19 % wide), 1 ms .. ~65 s. With twice-as-wide buckets a p99 read from
/// them is off by up to half its value, and moves far more than the latency does.
fn ack_latency() -> Latency {
    Latency::new(exponential_buckets(0.001, 2f64.powf(0.25), 65))
}

/// A histogram of durations, exported as prometheus-client's `Histogram` is, that takes an
/// observation without a lock: its bucket is found by binary search and counted with one
/// atomic add, and the sum is kept in nanoseconds with another. prometheus-client's own
/// takes a write lock and walks its buckets in order; three of them are observed per
/// message, one (arrival to PUBACK, 65 buckets) on the thread that reads the broker.
#[derive(Clone, Debug)]
pub struct Latency(Arc<LatencyBuckets>);

#[derive(Debug)]
struct LatencyBuckets {
    /// Upper bounds in seconds, ascending; the last count (`+Inf`) has none.
    bounds: Box<[f64]>,
    /// Observations per bucket, not cumulative: one more than `bounds`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, nanoseconds.
    sum_ns: AtomicU64,
}

impl Latency {
    /// A histogram with these upper bounds (seconds, ascending) and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Latency {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Latency(Arc::new(LatencyBuckets {
            bounds,
            counts,
            sum_ns: AtomicU64::new(0),
        }))
    }

    /// Count `d` in the first bucket whose bound is at least `d`.
    pub fn observe(&self, d: Duration) {
        let b = &self.0;
        let seconds = d.as_secs_f64();
        let i = b.bounds.partition_point(|&bound| bound < seconds);
        b.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        b.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        // The count is the buckets' total, so that `+Inf` always equals it.
        let buckets: Vec<(f64, u64)> = b
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(b.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = b.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered under the `weir_` prefix.
    pub fn new() -> Metrics {
        Metrics::with_control_rejected(Counter::default())
    }

    /// The metrics, with the control topic's count of entries not applied for want of a
    /// trusted signature (the control topic keeps it).
    pub fn with_control_rejected(control_rejected: Counter) -> Metrics {
        let mut r = Registry::with_prefix("weir");
        r.register(
            "control_entries_rejected",
            "Control-topic entries not applied: unsigned, signed by an untrusted key, or forged",
            control_rejected,
        );
        let m = Metrics {
            received: Counter::default(),
            redelivered: Counter::default(),
            retained: Counter::default(),
            transactions_committed: Counter::default(),
            transactions_aborted: Counter::default(),
            duplicates_answered: Counter::default(),
            acked: Counter::default(),
            in_flight: Gauge::default(),
            oldest_unacked_seconds: Gauge::default(),
            records: Family::default(),
            quarantined: Family::default(),
            transform_seconds: Family::new_with_constructor(latency),
            handover_seconds: latency(),
            produce_seconds: latency(),
            kafka_answer_seconds: latency(),
            ack_seconds: Family::new_with_constructor(ack_latency),
            group_in_flight: Family::default(),
            group_oldest_unacked_seconds: Family::default(),
            group_ready: Family::default(),
            group_throttled_seconds: Family::default(),
            group_slots_held: Family::default(),
            group_slot_changes: Family::default(),
            slot_holder: Family::default(),
            reconnects: Counter::default(),
            subscriptions_refused: Counter::default(),
            write_retries: Family::default(),
            stuck_writes: Gauge::default(),
            plugin_instance_waits: Gauge::default(),
            kafka_throttled_seconds: Counter::default(),
            oversize: Counter::default(),
            raw_capture_refused: Counter::default(),
            plugin_codes: Mutex::new(BTreeMap::new()),
            groups: Mutex::new(Vec::new()),
            // Not ready until a probe has looked.
            kafka_problems: Mutex::new(BTreeMap::from([(
                String::new(),
                "Kafka not reachable".into(),
            )])),
            registry: Registry::default(),
        };
        m.register_source(&mut r);
        m.register_stages(&mut r);
        m.register_groups(&mut r);
        m.register_kafka(&mut r);
        // Every kind of write from zero, so rates and alerts see the first retry.
        for kind in ["raw", "record", "quarantine"] {
            let _ = m
                .write_retries
                .get_or_create(&KindLabel { kind: kind.into() });
        }
        Metrics { registry: r, ..m }
    }

    /// The MQTT side: messages received, acknowledged, in flight, the session.
    fn register_source(&self, r: &mut Registry) {
        r.register("received", "MQTT messages received", self.received.clone());
        r.register(
            "redelivered",
            "MQTT messages received with DUP set (redelivered by the broker)",
            self.redelivered.clone(),
        );
        r.register(
            "retained",
            "Retained MQTT messages received",
            self.retained.clone(),
        );
        r.register(
            "transactions_committed",
            "Exactly once: Kafka transactions committed (each a session's batch and state)",
            self.transactions_committed.clone(),
        );
        r.register(
            "transactions_aborted",
            "Exactly once: Kafka transactions aborted and written again",
            self.transactions_aborted.clone(),
        );
        r.register(
            "duplicates_answered",
            "Exactly once: QoS 2 redeliveries of committed packet ids, answered and not written again",
            self.duplicates_answered.clone(),
        );
        r.register(
            "acked",
            "PUBACKs written to the MQTT broker",
            self.acked.clone(),
        );
        r.register(
            "in_flight",
            "Messages received and not yet acknowledged",
            self.in_flight.clone(),
        );
        r.register(
            "oldest_unacked_seconds",
            "Age of the oldest unacknowledged message",
            self.oldest_unacked_seconds.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "MQTT connections after the first",
            self.reconnects.clone(),
        );
        r.register(
            "mqtt_subscriptions_refused",
            "Subscriptions refused by the broker",
            self.subscriptions_refused.clone(),
        );
    }

    /// Records, quarantine entries and the time each stage takes.
    fn register_stages(&self, r: &mut Registry) {
        r.register(
            "records",
            "Records published to governed topics",
            self.records.clone(),
        );
        r.register(
            "quarantined",
            "Messages written to the quarantine topic",
            self.quarantined.clone(),
        );
        r.register(
            "transform_seconds",
            "Plugin call time per batch",
            self.transform_seconds.clone(),
        );
        r.register(
        "handover_seconds",
        "MQTT arrival to the message's Kafka writes being started (batching, transform, queueing), seconds",
        self.handover_seconds.clone(),
    );
        r.register(
            "produce_seconds",
            "Kafka write time per message, enqueue to acknowledgement",
            self.produce_seconds.clone(),
        );
        r.register(
            "kafka_answer_seconds",
            "Kafka write time per write, hand-off to librdkafka to the answer on the producer's event thread",
            self.kafka_answer_seconds.clone(),
        );
        r.register(
            "plugin_instance_waits",
            "Plugin calls waiting over a second for room in the host's full instance pool",
            self.plugin_instance_waits.clone(),
        );
    }

    /// Per isolation group: latency, in flight, readiness, pacing, scale-out slots.
    fn register_groups(&self, r: &mut Registry) {
        r.register(
            "ack_seconds",
            "Time from MQTT arrival to PUBACK written, per isolation group",
            self.ack_seconds.clone(),
        );
        r.register(
            "group_in_flight",
            "Messages received and not yet acknowledged, per isolation group",
            self.group_in_flight.clone(),
        );
        r.register(
            "group_oldest_unacked_seconds",
            "Age of the oldest unacknowledged message, per isolation group",
            self.group_oldest_unacked_seconds.clone(),
        );
        r.register(
            "group_ready",
            "1 when the isolation group's MQTT session is connected and subscribed",
            self.group_ready.clone(),
        );
        r.register(
            "group_throttled_seconds",
            "Time an isolation group's batches were held back to keep to its max_messages_per_s",
            self.group_throttled_seconds.clone(),
        );
        r.register(
            "slots_held",
            "Scale-out slots (MQTT sessions) an isolation group holds in this process",
            self.group_slots_held.clone(),
        );
        r.register(
            "slot_changes",
            "Scale-out slots this process took or gave up in Kafka group rebalances",
            self.group_slot_changes.clone(),
        );
        r.register(
            "slot_holder",
            "1 for the process holding a scale-out slot, as Kafka's group last described it",
            self.slot_holder.clone(),
        );
    }

    /// The Kafka side: retries, stuck writes, throttling, oversize and refused captures.
    fn register_kafka(&self, r: &mut Registry) {
        r.register(
            "kafka_write_retries",
            "Kafka writes retried after a failure",
            self.write_retries.clone(),
        );
        r.register(
            "kafka_stuck_writes",
            "Kafka writes currently being retried",
            self.stuck_writes.clone(),
        );
        r.register(
            "kafka_throttled_seconds",
            "Time Kafka's brokers held weir's produce requests back under a quota",
            self.kafka_throttled_seconds.clone(),
        );
        r.register(
            "oversize",
            "Messages over mqtt.max_message_bytes",
            self.oversize.clone(),
        );
        r.register(
        "raw_capture_refused",
        "Messages whose raw capture Kafka refused for good (their quarantine entry holds the original payload instead)",
        self.raw_capture_refused.clone(),
    );
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Count a quarantined message, bounding plugin codes' label cardinality.
    pub fn quarantine(&self, cohort: &str, code: &Code) {
        let mut label = code.as_str().to_owned();
        if let Code::Rejected(c) = code {
            let mut known = self.plugin_codes.lock().unwrap_or_else(|p| p.into_inner());
            let set = known.entry(cohort.to_owned()).or_default();
            if !set.contains(c) {
                if set.len() >= MAX_PLUGIN_CODES {
                    label = "other".into();
                } else {
                    set.insert(c.clone());
                }
            }
        }
        self.quarantined
            .get_or_create(&QuarantineLabel {
                cohort: cohort.to_owned(),
                code: label,
                stage: code.stage().as_str().to_owned(),
            })
            .inc();
    }

    /// The records-published counter of a cohort, to keep (one label lookup instead of
    /// one per message).
    pub fn records_of(&self, cohort: &str) -> Counter {
        self.records
            .get_or_create(&CohortLabel {
                cohort: cohort.to_owned(),
            })
            .clone()
    }

    /// Record `n` published records for a cohort.
    pub fn published(&self, cohort: &str, n: u64) {
        if n > 0 {
            self.records
                .get_or_create(&CohortLabel {
                    cohort: cohort.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// The series of group `name` (created on first use, exported from then on).
    pub fn group(&self, name: &str) -> GroupMetrics {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.iter().find(|g| g.name == name) {
            return g.clone();
        }
        let label = GroupLabel {
            group: name.to_owned(),
        };
        let g = GroupMetrics {
            name: name.to_owned(),
            in_flight: self.group_in_flight.get_or_create(&label).clone(),
            oldest_unacked_seconds: self
                .group_oldest_unacked_seconds
                .get_or_create(&label)
                .clone(),
            ack_seconds: self.ack_seconds.get_or_create(&label).clone(),
            throttled_seconds: self.group_throttled_seconds.get_or_create(&label).clone(),
            slots_held: self.group_slots_held.get_or_create(&label).clone(),
            slot_changes: self.group_slot_changes.get_or_create(&label).clone(),
            holders: Arc::default(),
            holder_family: self.slot_holder.clone(),
            ready: self.group_ready.get_or_create(&label).clone(),
        };
        groups.push(g.clone());
        g
    }

    /// Set the overall oldest-unacknowledged age: the oldest of any group's.
    pub fn refresh_oldest(&self) {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = groups
            .iter()
            .map(|g| g.oldest_unacked_seconds.get())
            .fold(0.0, f64::max);
        self.oldest_unacked_seconds.set(oldest);
    }

    /// What the last probe of `producer` found: `None` when every partition weir writes
    /// has a leader and enough in-sync replicas and the producer works, else why not.
    pub fn set_kafka_problem(&self, producer: &str, problem: Option<String>) {
        let mut problems = self
            .kafka_problems
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        problems.remove("");
        match problem {
            Some(why) => problems.insert(producer.to_owned(), why),
            None => problems.remove(producer),
        };
    }

    /// Why Kafka cannot be written to now, by the producers' last probes; `None` when
    /// every producer can write.
    pub fn kafka_problem(&self) -> Option<String> {
        let problems = self
            .kafka_problems
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut why: Vec<&str> = problems.values().map(String::as_str).collect();
        why.dedup();
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Why weir is not ready, or `None` when it is: MQTT connected and subscribed, Kafka
    /// reachable, no write stuck.
    pub fn not_ready(&self) -> Option<String> {
        let mut why = Vec::new();
        {
            let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let down: Vec<&str> = groups
                .iter()
                .filter(|g| g.ready.get() == 0)
                .map(|g| g.name.as_str())
                .collect();
            match down.as_slice() {
                _ if groups.is_empty() => why.push("MQTT not connected and subscribed".to_owned()),
                [] => {}
                [only] if *only == crate::config::DEFAULT_GROUP => {
                    why.push("MQTT not connected and subscribed".to_owned())
                }
                names => why.push(format!(
                    "MQTT session of group(s) {} not connected and subscribed",
                    names.join(", ")
                )),
            }
        }
        if let Some(problem) = self.kafka_problem() {
            why.push(problem);
        }
        let stuck = self.stuck_writes.get();
        if stuck > 0 {
            why.push(format!("{stuck} Kafka write(s) failing and being retried"));
        }
        let waits = self.plugin_instance_waits.get();
        if waits > 0 {
            why.push(format!(
                "{waits} plugin call(s) waiting for room in the host's full instance pool (more cohorts, workers or replays than it holds)"
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buckets, count and sum as prometheus-client's `Histogram` exports them, for the
    /// same observations: values on, just above and just below bounds, below the first,
    /// above the last, and zero.
    #[test]
    fn latency_exports_as_the_library_histogram_does() {
        use prometheus_client::metrics::histogram::Histogram;
        let bounds = || exponential_buckets(0.001, 2f64.powf(0.25), 65);
        let ours = Latency::new(bounds());
        let theirs = Histogram::new(bounds());
        let mut seen: Vec<Duration> = vec![Duration::ZERO, Duration::from_secs(3600)];
        for b in bounds() {
            let at = Duration::from_secs_f64(b);
            seen.extend([at, at + Duration::from_nanos(1)]);
            seen.extend(at.checked_sub(Duration::from_nanos(1)));
        }
        seen.extend((0..500u64).map(|i| Duration::from_micros(i * i * 7 + 13)));
        for d in &seen {
            ours.observe(*d);
            theirs.observe(d.as_secs_f64());
        }
        let text = |m: Box<dyn FnOnce(&mut Registry)>| {
            let mut r = Registry::default();
            m(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        let ours = text(Box::new(move |r| r.register("ack", "a", ours)));
        let theirs = text(Box::new(move |r| r.register("ack", "a", theirs)));
        let (sum, rest): (Vec<&str>, Vec<&str>) =
            ours.lines().partition(|l| l.starts_with("ack_sum "));
        let (their_sum, their_rest): (Vec<&str>, Vec<&str>) =
            theirs.lines().partition(|l| l.starts_with("ack_sum "));
        assert_eq!(rest, their_rest);
        assert!(
            rest.iter().any(|l| l.contains("le=\"+Inf\"} 697")),
            "{ours}"
        );
        let value = |l: &[&str]| l[0].rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        let (a, b) = (value(&sum), value(&their_sum));
        assert!((a - b).abs() < 1e-6 * b, "sum {a} against {b}");
    }

    #[test]
    fn plugin_code_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_PLUGIN_CODES + 10) {
            m.quarantine("c", &Code::Rejected(format!("code.n{i}")));
        }
        m.quarantine("c", &Code::RouteUnmatched);
        let text = m.encode();
        assert!(text.contains(r#"code="other""#), "{text}");
        assert!(
            text.contains(
                r#"weir_quarantined_total{cohort="c",code="other",stage="transform"} 10"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"code="route.unmatched",stage="route""#));
        let labelled = text.matches("weir_quarantined_total{").count();
        assert_eq!(labelled, MAX_PLUGIN_CODES + 2);
    }

    #[test]
    fn readiness_names_every_reason() {
        let m = Metrics::new();
        let why = m.not_ready().unwrap();
        assert!(why.contains("MQTT") && why.contains("Kafka"), "{why}");
        let (a, b) = (m.group("a"), m.group("b"));
        a.set_ready(true);
        m.set_kafka_problem("group a", Some("Kafka not reachable".into()));
        m.set_kafka_problem("group b", Some("the producer failed fatally".into()));
        let why = m.not_ready().unwrap();
        assert!(
            why.contains("reachable") && why.contains("fatally"),
            "{why}"
        );
        m.set_kafka_problem("group a", None);
        assert!(!m.not_ready().unwrap().contains("reachable"));
        m.set_kafka_problem("group b", None);
        assert_eq!(
            m.not_ready().unwrap(),
            "MQTT session of group(s) b not connected and subscribed"
        );
        b.set_ready(true);
        assert_eq!(m.not_ready(), None);
        assert!(m.encode().contains(r#"weir_group_ready{group="b"} 1"#));
        m.stuck_writes.inc();
        assert!(m.not_ready().unwrap().contains("being retried"));
        m.stuck_writes.dec();
        m.plugin_instance_waits.inc();
        assert!(
            m.not_ready()
                .unwrap()
                .contains("1 plugin call(s) waiting for room in the host's full instance pool")
        );
        m.plugin_instance_waits.dec();
        assert_eq!(m.not_ready(), None);
    }

    #[test]
    fn the_overall_oldest_age_is_the_oldest_groups() {
        let m = Metrics::new();
        m.group("a").oldest_unacked_seconds.set(2.5);
        m.group("b").oldest_unacked_seconds.set(7.0);
        m.refresh_oldest();
        assert_eq!(m.oldest_unacked_seconds.get(), 7.0);
        assert!(
            m.encode()
                .contains(r#"weir_group_oldest_unacked_seconds{group="a"} 2.5"#)
        );
    }
}
