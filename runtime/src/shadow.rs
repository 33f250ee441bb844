//! Shadow runs: a candidate version beside the live one, on a copy of a cohort's live
//! messages, publishing nothing.
//!
//! The pipeline offers each of the cohort's messages, with the live outcome, to a [`Tap`]:
//! a bounded queue it never waits on (a full queue drops the copy and counts it as
//! skipped), so the live path's cost is one copy per message. The candidate runs on a
//! thread of its own, throttled to [`CPU_SHARE`] of one core: after each batch that took
//! `t`, it rests `t · (1 − share) / share`. Per message the outcome classes and the record
//! bytes are compared; the first differences are kept as field-level diffs of the decoded
//! records.

use crate::transform::{Configured, Message, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The share of one core a shadow may use.
pub const CPU_SHARE: f64 = 0.1;
/// Messages waiting for the shadow, at most.
const QUEUE: usize = 1024;
/// Differences kept as examples.
const EXAMPLES: usize = 5;
/// Messages per candidate call.
const BATCH: usize = 64;

/// When a shadow run ends.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many messages were compared.
    Messages(u64),
    /// After this long.
    For(Duration),
}

/// Where the pipeline offers a cohort's messages to a shadow.
pub struct Tap {
    /// Cohort index.
    pub cohort: usize,
    tx: mpsc::SyncSender<(Message, Outcome)>,
    skipped: AtomicU64,
}

impl Tap {
    /// Offer a copy of a message and its live outcome; never waits.
    pub fn offer(&self, message: &Message, outcome: &Outcome) {
        if self
            .tx
            .try_send((message.clone(), outcome.clone()))
            .is_err()
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One field that differs between the live and the candidate record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldDiff {
    /// Top-level field name.
    pub field: String,
    /// Its live value (absent: the live record has no such field).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub live: Option<Value>,
    /// Its candidate value (absent: the candidate's record has no such field).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub candidate: Option<Value>,
}

/// A field that is there, even as JSON `null`, is `Some` (absent ones default to `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A message whose outcomes differ.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    /// The MQTT topic.
    pub topic: String,
    /// The live outcome, records decoded.
    pub live: Value,
    /// The candidate's.
    pub candidate: Value,
    /// When both emitted: the fields of the first record that differ.
    pub diff: Vec<FieldDiff>,
}

/// What a shadow run found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Messages compared.
    pub messages: u64,
    /// Same outcome class and the same record bytes (or the same rejection code).
    pub identical: u64,
    /// Both emitted (or both rejected), differently.
    pub different: u64,
    /// The live version emitted; the candidate rejected or skipped.
    pub candidate_rejected: u64,
    /// The live version rejected or failed; the candidate emitted.
    pub live_rejected: u64,
    /// The candidate trapped, ran out of time or memory, broke the contract or its records
    /// did not fit its schema.
    pub candidate_failed: u64,
    /// Copies dropped because the shadow was behind (the live path never waits for it).
    pub skipped: u64,
    /// Whether the limit was reached (false: the run was cut short by the server's cap).
    pub complete: bool,
    /// The first differences.
    pub examples: Vec<Example>,
}

/// A running shadow: the tap for the pipeline and the thread that compares.
pub struct Shadow {
    /// Give this to the pipeline.
    pub tap: Arc<Tap>,
    rx: mpsc::Receiver<(Message, Outcome)>,
}

impl Shadow {
    /// A shadow of `cohort`.
    pub fn new(cohort: usize) -> Shadow {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        Shadow {
            tap: Arc::new(Tap {
                cohort,
                tx,
                skipped: AtomicU64::new(0),
            }),
            rx,
        }
    }

    /// Compare until `limit` (or `cap`), on the calling thread; `live` decodes the live
    /// records.
    pub fn run(
        self,
        live: &Configured,
        candidate: &Configured,
        limit: Limit,
        cap: Duration,
    ) -> Report {
        let started = Instant::now();
        let deadline = started
            + match limit {
                Limit::For(d) => d.min(cap),
                Limit::Messages(_) => cap,
            };
        let mut report = Report::default();
        let mut batch: Vec<(Message, Outcome)> = Vec::with_capacity(BATCH);
        loop {
            let done = match limit {
                Limit::Messages(n) => report.messages >= n,
                Limit::For(_) => false,
            };
            let now = Instant::now();
            if done || now >= deadline {
                report.complete = done || matches!(limit, Limit::For(d) if d <= cap);
                break;
            }
            let want = match limit {
                Limit::Messages(n) => (n - report.messages).min(BATCH as u64) as usize,
                Limit::For(_) => BATCH,
            };
            match self
                .rx
                .recv_timeout((deadline - now).min(Duration::from_millis(200)))
            {
                Ok(first) => batch.push(first),
                Err(_) => continue,
            }
            while batch.len() < want {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let busy = Instant::now();
            let (mut messages, lives): (Vec<Message>, Vec<Outcome>) = batch.drain(..).unzip();
            let outcomes = candidate.process(&mut messages);
            for ((m, l), c) in messages.iter().zip(&lives).zip(&outcomes) {
                compare(&mut report, live, candidate, m, l, c);
            }
            let rest = busy.elapsed().mul_f64((1.0 - CPU_SHARE) / CPU_SHARE);
            std::thread::sleep(rest.min(deadline.saturating_duration_since(Instant::now())));
        }
        report.skipped = self.tap.skipped.load(Ordering::Relaxed);
        report
    }
}

fn class(o: &Outcome) -> &'static str {
    match o {
        Outcome::Emit(_) => "emit",
        Outcome::Reject { .. } => "reject",
        Outcome::Skip => "skip",
        Outcome::Fail { .. } => "fail",
    }
}

fn compare(
    report: &mut Report,
    live: &Configured,
    candidate: &Configured,
    m: &Message,
    l: &Outcome,
    c: &Outcome,
) {
    report.messages += 1;
    let (counter, same) = match (l, c) {
        (_, Outcome::Fail { .. }) => (&mut report.candidate_failed, false),
        (Outcome::Emit(a), Outcome::Emit(b)) if a == b => (&mut report.identical, true),
        (Outcome::Emit(_), Outcome::Emit(_)) => (&mut report.different, false),
        (Outcome::Emit(_), _) => (&mut report.candidate_rejected, false),
        (Outcome::Reject { .. } | Outcome::Fail { .. }, Outcome::Emit(_)) => {
            (&mut report.live_rejected, false)
        }
        (Outcome::Reject { code: a, .. }, Outcome::Reject { code: b, .. }) if a == b => {
            (&mut report.identical, true)
        }
        (Outcome::Skip, Outcome::Skip) => (&mut report.identical, true),
        _ => (&mut report.different, false),
    };
    *counter += 1;
    if !same && report.examples.len() < EXAMPLES {
        let (lv, cv) = (render(live, l), render(candidate, c));
        let diff = match (first_record(&lv), first_record(&cv)) {
            (Some(a), Some(b)) => field_diff(a, b),
            _ => Vec::new(),
        };
        report.examples.push(Example {
            topic: m.topic.clone(),
            live: lv,
            candidate: cv,
            diff,
        });
    }
}

/// An outcome as JSON, records decoded with the version's schema.
fn render(plugin: &Configured, o: &Outcome) -> Value {
    match o {
        Outcome::Emit(records) => serde_json::json!({
            "outcome": class(o),
            "records": records
                .iter()
                .map(|r| plugin
                    .plugin()
                    .schema()
                    .decode_to_json(&r.value)
                    .unwrap_or_else(|e| Value::String(format!("undecodable: {e}"))))
                .collect::<Vec<_>>(),
        }),
        Outcome::Reject { code, reason } => {
            serde_json::json!({"outcome": class(o), "code": code, "reason": reason})
        }
        Outcome::Fail { code, reason } => {
            serde_json::json!({"outcome": class(o), "code": code.to_string(), "reason": reason})
        }
        _ => serde_json::json!({"outcome": class(o)}),
    }
}

fn first_record(v: &Value) -> Option<&serde_json::Map<String, Value>> {
    v["records"].as_array()?.first()?.as_object()
}

/// The top-level fields whose values differ, in the live record's order then the
/// candidate's new fields.
fn field_diff(
    live: &serde_json::Map<String, Value>,
    candidate: &serde_json::Map<String, Value>,
) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    for (k, v) in live {
        if candidate.get(k) != Some(v) {
            out.push(FieldDiff {
                field: k.clone(),
                live: Some(v.clone()),
                candidate: candidate.get(k).cloned(),
            });
        }
    }
    for (k, v) in candidate {
        if !live.contains_key(k) {
            out.push(FieldDiff {
                field: k.clone(),
                live: None,
                candidate: Some(v.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_field_and_a_changed_value_are_both_reported() {
        let live = serde_json::json!({"a": 1, "b": "x"});
        let cand = serde_json::json!({"a": 2, "b": "x", "c": null});
        let d = field_diff(live.as_object().unwrap(), cand.as_object().unwrap());
        assert_eq!(
            d,
            vec![
                FieldDiff {
                    field: "a".into(),
                    live: Some(1.into()),
                    candidate: Some(2.into())
                },
                FieldDiff {
                    field: "c".into(),
                    live: None,
                    candidate: Some(Value::Null)
                },
            ]
        );
    }
}
