//! `weir replay`: re-run a range of the raw-capture topic through the exact plugin version
//! that first processed each message (recorded on its raw capture), or a named one, and
//! either write the results to a topic or verify them against what was published.
//!
//! Verify joins on `weir.message.id`: for each replayed message, the governed records with
//! its id (from the cohorts' output topics) or its quarantine entry are the original
//! outcome. The same sha256 must give byte-identical records; anything else is reported
//! loudly. Every version the range needs is looked up in the plugin store before any work.

use crate::capture::{self, Captured};
use crate::config::{Cohort, Config};
use crate::control::{Control, State};
use crate::encode::registry::RegistryClient;
use crate::lifecycle::cohort_plan;
use crate::sink::Sink;
use crate::store::Store;
use crate::transform::{Configured, Host, Message, Outcome, Plugin};
use rdkafka::Message as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use weir_core::headers as h;
use weir_core::plan::{Input, Kind, Topology};
use weir_core::write::Write;

/// Why a replay cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The range needs a version the store does not have.
    #[error(
        "the range needs {what} (sha256 {sha256}), which is not in the plugin store {store}; push that exact file (weir plugin push) or run with --through NAME@VERSION"
    )]
    MissingVersion {
        /// name@version, or the cohort it was recorded for.
        what: String,
        /// The sha256 recorded on the raw capture.
        sha256: String,
        /// The store.
        store: String,
    },
    /// Stopped by a signal (internal: the summary says `interrupted`).
    #[error("interrupted")]
    Interrupted,
    /// Anything else, with its cause and fix.
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Other(e.to_string())
}

impl From<String> for ReplayError {
    fn from(e: String) -> Self {
        ReplayError::Other(e)
    }
}

pub use crate::capture::Range;

/// The config key of the topic `weir run` writes or reads that `topic` is, if it is one:
/// a cohort's output, the quarantine, the raw capture or the control topic. Replaying into
/// such a topic mixes replayed records with live ones (or feeds the control plane).
pub fn live_topic(config: &crate::config::Config, topic: &str) -> Option<String> {
    let out = &config.output;
    config
        .cohorts
        .iter()
        .enumerate()
        .find(|(_, c)| c.output_topic == topic)
        .map(|(i, _)| format!("cohort[{i}].output_topic"))
        .or_else(|| (out.quarantine_topic == topic).then(|| "output.quarantine_topic".into()))
        .or_else(|| (out.raw_topic.as_deref() == Some(topic)).then(|| "output.raw_topic".into()))
        .or_else(|| (config.plugins.control_topic == topic).then(|| "plugins.control_topic".into()))
}

/// What to do with the replayed outcomes.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Write records to this topic (quarantine outcomes to the second, or only count them).
    To(String, Option<String>),
    /// Compare with what was published.
    Verify,
}

/// One message whose replay differs from what was published.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The message id.
    pub message_id: String,
    /// Raw-topic partition and offset.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The version the replay ran.
    pub replayed_with: String,
    /// What was published: `N record(s)` with their decoded values, or the quarantine code.
    pub published: serde_json::Value,
    /// What the replay produced.
    pub replayed: serde_json::Value,
}

/// The final summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Raw messages replayed.
    pub replayed: u64,
    /// Verify: same records byte for byte, or the same quarantine code, or both nothing.
    pub identical: u64,
    /// Verify: the outcome differs.
    pub different: u64,
    /// Verify: nothing was published with this message id.
    pub missing: u64,
    /// Replays that failed in the sandbox (trap, timeout, ...) or could not be written.
    pub failed: u64,
    /// `--to`: records written.
    pub written: u64,
    /// `--to`: quarantine outcomes (written to `--quarantine-to`, or only counted).
    pub quarantined: u64,
    /// Raw records skipped: not routed to a cohort when captured (no version recorded).
    pub unrouted: u64,
    /// The first differences.
    pub examples: Vec<Difference>,
    /// Stopped by a signal before the end of the range (with --resume, the next run goes on
    /// from where this one stopped).
    pub interrupted: bool,
}

const EXAMPLES: usize = 5;

/// What was published for a message: its records' Avro datums, in order, or its quarantine
/// code.
#[derive(Default)]
struct Published {
    records: Vec<Vec<u8>>,
    quarantine: Option<String>,
}

/// A version ready to replay through, per cohort.
struct Runner {
    configured: Configured,
    plugin: Plugin,
    cohort: usize,
}

/// Resuming and stopping a replay.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Keep progress in a consumer group named after the replay (source, target, version,
    /// range), and start where the last run of the same replay stopped.
    pub resume: bool,
    /// Set (by a signal) to stop after the batch in hand: it is written and its progress
    /// recorded, then the summary says `interrupted`.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The consumer group of a resumable replay.
fn resume_group(from: &str, mode: &Mode, through: Option<&str>, range: &Range) -> String {
    let key = format!("{from}|{mode:?}|{through:?}|{range:?}");
    format!("weir-replay-{}", &hex::encode(Sha256::digest(key))[..16])
}

/// One replay: from where, which range, what to do, through which version.
#[derive(Debug, Clone)]
pub struct Job {
    /// The raw-capture topic.
    pub from: String,
    /// The range of it.
    pub range: Range,
    /// Write or verify.
    pub mode: Mode,
    /// A stored version (`name@version`) to run every message through instead of its own.
    pub through: Option<String>,
    /// Resuming and stopping.
    pub control: RunControl,
}

/// Run a replay. `progress` is called with (messages done, messages total).
pub async fn run(
    config: &Config,
    host: Host,
    job: Job,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, ReplayError> {
    let Job {
        from,
        range,
        mode,
        through,
        control: run_control,
    } = job;
    let (from, range, through) = (from.as_str(), &range, through.as_deref());
    let store = Store::open(&config.plugins.store).map_err(other)?;
    crate::capture::probe(&config.kafka).await.map_err(other)?;
    let control = Control::for_config(config, store.clone())
        .await
        .map_err(other)?;
    let state: std::sync::Arc<State> = control.state();
    let group = run_control
        .resume
        .then(|| resume_group(from, &mode, through, range));
    let consumer = capture::consumer(&config.kafka, group.as_deref())?;
    let mut bounds = capture::offsets(&consumer, from, range)?;
    if bounds.is_empty() && capture::offsets(&consumer, from, &Range::default())?.is_empty() {
        return Err(other(format!(
            "topic {from} does not exist or is empty; is it the raw-capture topic (output.raw_topic)?"
        )));
    }
    if group.is_some() {
        // Start where the last run of this replay stopped.
        capture::resume_from(&consumer, from, &mut bounds)?;
    }
    let total: i64 = bounds.iter().map(|(_, s, e)| e - s).sum();

    // Pass 1: which (cohort, version) pairs the range needs; all must be there before work.
    let mut needed: BTreeMap<(String, String), ()> = BTreeMap::new();
    let through = match through {
        Some(id) => Some(
            state
                .uploads
                .get(id)
                .map(|u| u.plugin.sha256.clone())
                .ok_or_else(|| {
                    other(format!(
                        "{id} is not in the plugin store; push it first (weir plugin push FILE.wasm)"
                    ))
                })?,
        ),
        None => None,
    };
    // A range is long runs of one version: only a change of pair is looked at closely.
    let mut last: (Vec<u8>, Vec<u8>) = Default::default();
    capture::read::<ReplayError>(&consumer, from, &bounds, |m| {
        if let (Some(cohort), Some(sha)) = (
            capture::header_bytes(m, h::COHORT),
            capture::header_bytes(m, h::PLUGIN_SHA256),
        ) && (cohort, sha) != (last.0.as_slice(), last.1.as_slice())
        {
            last = (cohort.to_vec(), sha.to_vec());
            let cohort = String::from_utf8_lossy(cohort).into_owned();
            let sha = String::from_utf8_lossy(sha).into_owned();
            needed.insert((cohort, through.clone().unwrap_or(sha)), ());
        }
        Ok(())
    })?;
    let registry = RegistryClient::for_config(&config.registry);
    let mut runners: HashMap<(String, String), Runner> = HashMap::new();
    for (cohort, sha) in needed.keys() {
        let ci = config
            .cohorts
            .iter()
            .position(|c| &c.name == cohort)
            .ok_or_else(|| {
                other(format!(
                    "the range holds messages of cohort {cohort:?}, which {} does not define; replay with the config the messages were processed under",
                    "the config"
                ))
            })?;
        let bytes = store.get(sha).map_err(other)?.ok_or_else(|| {
            let what = state
                .uploads
                .values()
                .find(|u| &u.plugin.sha256 == sha)
                .map_or_else(
                    || format!("the version cohort {cohort:?} ran"),
                    |u| u.plugin.id(),
                );
            ReplayError::MissingVersion {
                what,
                sha256: sha.clone(),
                store: store.dir().display().to_string(),
            }
        })?;
        let plugin = host.load(&bytes).map_err(other)?;
        let c: &Cohort = &config.cohorts[ci];
        let settings = c.settings();
        let configured = plugin
            .configure_with(
                settings,
                format!("replay:{cohort}:{}", plugin.info().id()),
                crate::transform::CallLimits::of(c),
            )
            .map_err(|e| {
                other(format!(
                    "{} refused cohort {cohort:?}'s config: {e}",
                    plugin.info().id()
                ))
            })?;
        runners.insert(
            (cohort.clone(), sha.clone()),
            Runner {
                configured,
                plugin,
                cohort: ci,
            },
        );
    }

    // Verify: what was published, by message id.
    let mut published: HashMap<String, Published> = HashMap::new();
    if matches!(mode, Mode::Verify) {
        let mut topics: Vec<String> = runners
            .values()
            .map(|r| config.cohorts[r.cohort].output_topic.clone())
            .collect();
        topics.sort();
        topics.dedup();
        for t in &topics {
            let b = capture::offsets(&consumer, t, &Range::default())?;
            capture::read::<ReplayError>(&consumer, t, &b, |m| {
                if let Some(id) = capture::header(m, h::MESSAGE_ID) {
                    let v = m.payload().unwrap_or_default();
                    let datum = v.get(5..).unwrap_or_default().to_vec();
                    published.entry(id).or_default().records.push(datum);
                }
                Ok(())
            })?;
        }
        let q = &config.output.quarantine_topic;
        let b = capture::offsets(&consumer, q, &Range::default())?;
        capture::read::<ReplayError>(&consumer, q, &b, |m| {
            if let (Some(id), Some(code)) = (
                capture::header(m, h::MESSAGE_ID),
                capture::header(m, h::ERROR_CODE),
            ) {
                published.entry(id).or_default().quarantine = Some(code);
            }
            Ok(())
        })?;
    }

    // --to: one topology per runner writing to the target topic.
    let mut sink = None;
    let mut topologies: HashMap<(String, String), Topology> = HashMap::new();
    if let Mode::To(to, quarantine_to) = &mode {
        let s = Sink::new(&config.kafka, "replay").map_err(other)?;
        let mut topics = vec![(to.clone(), "--to".to_owned())];
        if let Some(q) = quarantine_to {
            topics.push((q.clone(), "--quarantine-to".to_owned()));
        }
        s.check_topics(&topics).await.map_err(other)?;
        for (key, r) in &runners {
            let info = r.plugin.info();
            let record_name = crate::encode::registry::record_full_name(&info.schema)
                .unwrap_or_else(|| info.name.clone());
            let subject = crate::encode::registry::subject(
                config.registry.subject_strategy,
                to,
                &record_name,
            );
            let schema_id = registry
                .schema_id(&subject, &info.schema, config.registry.auto_register)
                .await
                .map_err(other)?;
            let c = &config.cohorts[r.cohort];
            let plan = cohort_plan(c, &r.plugin, schema_id, to).map_err(other)?;
            topologies.insert(
                key.clone(),
                Topology {
                    cohorts: vec![plan],
                    rules: vec![],
                    quarantine_topic: quarantine_to.clone().unwrap_or_default(),
                    raw_topic: None,
                },
            );
        }
        sink = Some(s);
    }

    // Pass 2: replay.
    let mut summary = Summary::default();
    let mut batch: Vec<Captured> = Vec::with_capacity(64);
    let mut pending = Vec::new();
    let mut done = 0u64;
    let mut flush = |batch: &mut Vec<Captured>,
                     summary: &mut Summary,
                     pending: &mut Vec<_>|
     -> Result<(), ReplayError> {
        // One plugin call per version for the whole batch, as live.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut groups: BTreeMap<&(String, String), Vec<usize>> = BTreeMap::new();
        let keys: Vec<Option<(String, String)>> = batch
            .iter()
            .map(|raw| match (&raw.cohort, &raw.sha256) {
                (Some(c), Some(sha)) => Some((c.clone(), through.clone().unwrap_or(sha.clone()))),
                _ => None,
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            if let Some(k) = k {
                groups.entry(k).or_default().push(i);
            }
        }
        for (k, idx) in groups {
            // Lent to the plugin and given back (process leaves them unchanged).
            let mut msgs: Vec<Message> = idx
                .iter()
                .map(|&i| std::mem::take(&mut batch[i].message))
                .collect();
            let results = runners[k].configured.process(&mut msgs);
            for ((i, o), m) in idx.iter().zip(results).zip(msgs) {
                outcomes[*i] = Some(o);
                batch[*i].message = m;
            }
        }
        for ((raw, key), outcome) in batch.drain(..).zip(keys).zip(outcomes) {
            done += 1;
            let (Some(key), Some(outcome)) = (key, outcome) else {
                summary.unrouted += 1;
                continue;
            };
            let r = &runners[&key];
            summary.replayed += 1;
            if let Outcome::Fail { .. } = &outcome {
                summary.failed += 1;
            }
            match &mode {
                Mode::Verify => verify(summary, &published, &raw, r, &outcome),
                Mode::To(_, quarantine_to) => {
                    if matches!(outcome, Outcome::Reject { .. } | Outcome::Fail { .. }) {
                        summary.quarantined += 1;
                        if quarantine_to.is_none() {
                            continue;
                        }
                    }
                    let topo = &topologies[&key];
                    let input = Input {
                        id: raw.id,
                        message: raw.message,
                        retained: raw.retained,
                        oversize: None,
                    };
                    let mut d = topo.plan(input, Some(0), Some(outcome));
                    if let weir_core::plan::Next::Send { writes, .. } = d.start() {
                        for (kind, w) in writes {
                            if kind == Kind::Record {
                                summary.written += 1;
                            }
                            pending.push(w);
                        }
                    }
                }
            }
        }
        Ok(())
    };
    // Writes are enqueued as they are made and their answers awaited once more than
    // IN_FLIGHT wait (and before progress is recorded), so memory stays bounded, Kafka's
    // pace sets the replay's, and the producer is never waited on one batch at a time.
    const IN_FLIGHT: usize = 20_000;
    let handle = tokio::runtime::Handle::current();
    let mut inflight = 0usize;
    let mut send = |pending: &mut Vec<Write>, summary: &mut Summary, drain: bool| {
        let Some(sink) = &sink else { return };
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                for w in pending.drain(..) {
                    match sink.send(&w, 0).await {
                        Ok(()) => inflight += 1,
                        Err(_) => summary.failed += 1,
                    }
                }
                let keep = if drain { 0 } else { IN_FLIGHT };
                summary.failed += sink.settle(&mut inflight, keep).await as u64;
            })
        });
    };
    // Done up to (exclusive) per partition, recorded after each batch is written.
    let mut done_to: BTreeMap<i32, i64> = BTreeMap::new();
    let record = |done_to: &BTreeMap<i32, i64>| -> Result<(), ReplayError> {
        if group.is_none() {
            return Ok(());
        }
        capture::record_progress(&consumer, from, done_to).map_err(ReplayError::Other)
    };
    let mut since_recorded = 0usize;
    let read_result = capture::read(&consumer, from, &bounds, |m| {
        done_to.insert(m.partition(), m.offset() + 1);
        batch.push(capture::captured(m));
        let stop = run_control.stop.load(std::sync::atomic::Ordering::Relaxed);
        if batch.len() >= 100 || stop {
            since_recorded += batch.len();
            flush(&mut batch, &mut summary, &mut pending)?;
            // Progress is recorded only once everything before it is written and
            // acknowledged; after a write that failed for good it is not recorded again, so
            // a resumed run goes back to before the failure instead of skipping it.
            let checkpoint = group.is_some() && (since_recorded >= 5_000 || stop);
            send(&mut pending, &mut summary, checkpoint);
            if checkpoint && summary.failed == 0 {
                record(&done_to)?;
                since_recorded = 0;
            }
            progress(summary.replayed + summary.unrouted, total as u64);
        }
        if stop {
            return Err(ReplayError::Interrupted);
        }
        Ok(())
    });
    match read_result {
        Ok(()) => {}
        Err(ReplayError::Interrupted) => summary.interrupted = true,
        Err(e) => return Err(e),
    }
    flush(&mut batch, &mut summary, &mut pending)?;
    send(&mut pending, &mut summary, true);
    if summary.failed == 0 {
        record(&done_to)?;
    }
    progress(summary.replayed + summary.unrouted, total as u64);
    if let Some(sink) = &sink {
        sink.flush(Duration::from_secs(30));
    }
    Ok(summary)
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn verify(
    summary: &mut Summary,
    published: &HashMap<String, Published>,
    raw: &Captured,
    r: &Runner,
    outcome: &Outcome,
) {
    let replayed: Vec<&[u8]> = match outcome {
        Outcome::Emit(records) => records.iter().map(|r| r.value.as_slice()).collect(),
        _ => Vec::new(),
    };
    let code = match outcome {
        Outcome::Reject { code, .. } => Some(code.clone()),
        Outcome::Fail { code, .. } => Some(code.to_string()),
        _ => None,
    };
    let Some(p) = published.get(&raw.id) else {
        if replayed.is_empty() && code.is_none() {
            // Skipped then and now: nothing was published and nothing would be.
            summary.identical += 1;
        } else {
            summary.missing += 1;
            example(
                summary,
                raw,
                r,
                serde_json::json!("nothing with this message id"),
                outcome,
            );
        }
        return;
    };
    let same = p.quarantine.is_none()
        && code.is_none()
        && p.records.len() == replayed.len()
        && p.records
            .iter()
            .zip(&replayed)
            .all(|(a, b)| a.as_slice() == *b)
        || (p.records.is_empty() && p.quarantine.is_some() && p.quarantine == code);
    if same {
        summary.identical += 1;
    } else {
        summary.different += 1;
        let shown = match &p.quarantine {
            Some(c) if p.records.is_empty() => serde_json::json!({"quarantined": c}),
            _ => serde_json::json!({"records": p.records.iter().map(|d| {
                r.plugin.schema().decode_to_json(d).unwrap_or_else(|_| serde_json::json!({"undecodable": digest(d)}))
            }).collect::<Vec<_>>()}),
        };
        example(summary, raw, r, shown, outcome);
    }
}

fn example(
    summary: &mut Summary,
    raw: &Captured,
    r: &Runner,
    published: serde_json::Value,
    outcome: &Outcome,
) {
    if summary.examples.len() >= EXAMPLES {
        return;
    }
    let replayed = match outcome {
        Outcome::Emit(records) => serde_json::json!({"records": records.iter().map(|rec| {
            r.plugin.schema().decode_to_json(&rec.value).unwrap_or_default()
        }).collect::<Vec<_>>()}),
        Outcome::Reject { code, reason } => {
            serde_json::json!({"quarantined": code, "reason": reason})
        }
        Outcome::Fail { code, reason } => {
            serde_json::json!({"failed": code.to_string(), "reason": reason})
        }
        Outcome::Skip => serde_json::json!("skipped"),
    };
    summary.examples.push(Difference {
        message_id: raw.id.clone(),
        partition: raw.partition,
        offset: raw.offset,
        replayed_with: r.plugin.info().id(),
        published,
        replayed,
    });
}
