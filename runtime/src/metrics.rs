//! What weir has done and what it is waiting for, as Prometheus metrics (prometheus-client,
//! served as OpenMetrics text on the admin listener's `/metrics`), plus the readiness flags
//! behind `/readyz`.
//!
//! Label values are bounded: cohorts come from the config, quarantine codes from a fixed
//! list or from a plugin's checked rejection codes, at most [`MAX_PLUGIN_CODES`] distinct
//! ones per cohort (more are counted under `code="other"`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    pub transform_seconds: Family<CohortLabel, Histogram>,
    /// MQTT arrival to the message's writes being started (batching, transform and the
    /// wait for the courier), seconds.
    pub handover_seconds: Histogram,
    /// Kafka enqueue-to-acknowledgement latency per message, seconds.
    pub produce_seconds: Histogram,
    /// MQTT arrival to PUBACK written, seconds.
    pub ack_seconds: Histogram,
    /// MQTT connections made after the first.
    pub reconnects: Counter,
    /// Subscriptions the broker refused (SUBACK failure or QoS 0).
    pub subscriptions_refused: Counter,
    /// Kafka writes that failed and are being retried, per kind.
    pub write_retries: Family<KindLabel, Counter>,
    /// Writes currently stuck in a retry loop.
    pub stuck_writes: Gauge,
    /// Quarantined because the payload was too large (also in `quarantined`).
    pub oversize: Counter,
    plugin_codes: Mutex<BTreeMap<String, BTreeSet<String>>>,
    mqtt_ready: AtomicBool,
    kafka_ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered under the `weir_` prefix.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("weir");
        let m = Metrics {
            received: Counter::default(),
            redelivered: Counter::default(),
            retained: Counter::default(),
            acked: Counter::default(),
            in_flight: Gauge::default(),
            oldest_unacked_seconds: Gauge::default(),
            records: Family::default(),
            quarantined: Family::default(),
            transform_seconds: Family::new_with_constructor(latency),
            handover_seconds: latency(),
            produce_seconds: latency(),
            ack_seconds: latency(),
            reconnects: Counter::default(),
            subscriptions_refused: Counter::default(),
            write_retries: Family::default(),
            stuck_writes: Gauge::default(),
            oversize: Counter::default(),
            plugin_codes: Mutex::new(BTreeMap::new()),
            mqtt_ready: AtomicBool::new(false),
            kafka_ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        r.register("received", "MQTT messages received", m.received.clone());
        r.register(
            "redelivered",
            "MQTT messages received with DUP set (redelivered by the broker)",
            m.redelivered.clone(),
        );
        r.register(
            "retained",
            "Retained MQTT messages received",
            m.retained.clone(),
        );
        r.register(
            "acked",
            "PUBACKs written to the MQTT broker",
            m.acked.clone(),
        );
        r.register(
            "in_flight",
            "Messages received and not yet acknowledged",
            m.in_flight.clone(),
        );
        r.register(
            "oldest_unacked_seconds",
            "Age of the oldest unacknowledged message",
            m.oldest_unacked_seconds.clone(),
        );
        r.register(
            "records",
            "Records published to governed topics",
            m.records.clone(),
        );
        r.register(
            "quarantined",
            "Messages written to the quarantine topic",
            m.quarantined.clone(),
        );
        r.register(
            "transform_seconds",
            "Plugin call time per batch",
            m.transform_seconds.clone(),
        );
        r.register(
            "handover_seconds",
            "MQTT arrival to the message's Kafka writes being started (batching, transform, queueing), seconds",
            m.handover_seconds.clone(),
        );
        r.register(
            "produce_seconds",
            "Kafka write time per message, enqueue to acknowledgement",
            m.produce_seconds.clone(),
        );
        r.register(
            "ack_seconds",
            "Time from MQTT arrival to PUBACK written",
            m.ack_seconds.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "MQTT connections after the first",
            m.reconnects.clone(),
        );
        r.register(
            "mqtt_subscriptions_refused",
            "Subscriptions refused by the broker",
            m.subscriptions_refused.clone(),
        );
        r.register(
            "kafka_write_retries",
            "Kafka writes retried after a failure",
            m.write_retries.clone(),
        );
        r.register(
            "kafka_stuck_writes",
            "Kafka writes currently being retried",
            m.stuck_writes.clone(),
        );
        r.register(
            "oversize",
            "Messages over mqtt.max_message_bytes",
            m.oversize.clone(),
        );
        // Every kind of write from zero, so rates and alerts see the first retry.
        for kind in ["raw", "record", "quarantine"] {
            let _ = m
                .write_retries
                .get_or_create(&KindLabel { kind: kind.into() });
        }
        Metrics { registry: r, ..m }
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

    /// MQTT connected and every subscription granted.
    pub fn set_mqtt_ready(&self, ready: bool) {
        self.mqtt_ready.store(ready, Ordering::Release);
    }

    /// Kafka answered a metadata request.
    pub fn set_kafka_ready(&self, ready: bool) {
        self.kafka_ready.store(ready, Ordering::Release);
    }

    /// Why weir is not ready, or `None` when it is: MQTT connected and subscribed, Kafka
    /// reachable, no write stuck.
    pub fn not_ready(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.mqtt_ready.load(Ordering::Acquire) {
            why.push("MQTT not connected and subscribed".to_owned());
        }
        if !self.kafka_ready.load(Ordering::Acquire) {
            why.push("Kafka not reachable".to_owned());
        }
        let stuck = self.stuck_writes.get();
        if stuck > 0 {
            why.push(format!("{stuck} Kafka write(s) failing and being retried"));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Observe a duration on a histogram.
    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.set_mqtt_ready(true);
        m.set_kafka_ready(true);
        assert_eq!(m.not_ready(), None);
        m.stuck_writes.inc();
        assert!(m.not_ready().unwrap().contains("being retried"));
    }
}
