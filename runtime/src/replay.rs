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
use crate::control::State;
use crate::encode::registry::RegistryClient;
use crate::jobs;
use crate::sink::Sink;
use crate::transform::{Configured, Host, Message, Outcome, Plugin};
use rdkafka::Message as _;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Reaching or reading Kafka failed.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// The topic to replay holds nothing.
    #[error(
        "topic {0} does not exist or is empty; is it the raw-capture topic (output.raw_topic)?"
    )]
    Empty(String),
    /// `--through NAME@VERSION` names a version the store does not have.
    #[error("{0} is not in the plugin store; push it first (weir plugin push FILE.wasm)")]
    NotStored(String),
    /// The range holds a cohort the config does not define.
    #[error(
        "the range holds messages of cohort {0:?}, which the config does not define; replay with the config the messages were processed under"
    )]
    UnknownCohort(String),
    /// Opening the store and control plane, loading or configuring a version, or getting
    /// its schema id failed.
    #[error(transparent)]
    Job(#[from] jobs::JobError),
    /// The plugin store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The producer of `--to` cannot be made, or its topics cannot be used.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

pub use crate::capture::Range;

/// The config key of the topic `weir run` writes or reads that `topic` is, if it is one:
/// a cohort's output, the quarantine, the raw capture, the control topic or a group's
/// scale-out slots. Replaying into such a topic mixes replayed records with live ones (or
/// feeds the control plane, or the membership of the slots).
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
        .or_else(|| {
            // A group's scale-out membership (`weir.slots.<client_id>`).
            let slotted = config
                .group_plans()
                .into_iter()
                .filter(|g| g.mqtt.slots.is_some());
            slotted
                .map(|g| crate::config::slots_topic(&g.mqtt.client_id))
                .find(|t| t == topic)
                .map(|_| "mqtt.slots".into())
        })
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
    let opened = jobs::open(config).await?;
    let group = run_control
        .resume
        .then(|| resume_group(&from, &mode, through.as_deref(), &range));
    let consumer = capture::consumer(&config.kafka, group.as_deref())?;
    let bounds = bounds(&consumer, &from, &range, group.is_some())?;
    let through = match through {
        Some(id) => Some(stored_sha256(&opened.state, &id)?),
        None => None,
    };
    let needed = needed(&consumer, &from, &bounds, through.as_deref())?;
    let runners = runners(config, &host, &opened, &needed)?;
    let published = match &mode {
        Mode::Verify => published(config, &consumer, &runners)?,
        Mode::To(..) => HashMap::new(),
    };
    let target = match &mode {
        Mode::To(to, quarantine_to) => {
            Some(Target::open(config, &runners, to, quarantine_to.as_deref()).await?)
        }
        Mode::Verify => None,
    };
    let mut pass = Pass {
        through: through.as_deref(),
        runners: &runners,
        published: &published,
        target: target.as_ref(),
        summary: Summary::default(),
        pending: Vec::new(),
        writer: jobs::Writer::new(target.as_ref().map(|t| &t.sink), IN_FLIGHT),
    };
    let read = Read {
        consumer: &consumer,
        from: &from,
        bounds: &bounds,
        resumable: group.is_some(),
        stop: &run_control.stop,
    };
    read.through(&mut pass, progress)?;
    if let Some(t) = &target {
        t.sink.flush(Duration::from_secs(30));
    }
    Ok(pass.summary)
}

/// Writes awaiting Kafka's answer before more are sent: memory stays bounded, Kafka's pace
/// sets the replay's, and the producer is never waited on one batch at a time.
const IN_FLIGHT: usize = 20_000;

/// The range to read per partition (start, end), from where the last run of a resumable
/// replay stopped; an error if the topic is missing or empty.
fn bounds(
    consumer: &BaseConsumer,
    from: &str,
    range: &Range,
    resume: bool,
) -> Result<Vec<(i32, i64, i64)>, ReplayError> {
    let mut bounds = capture::offsets(consumer, from, range)?;
    if bounds.is_empty() && capture::offsets(consumer, from, &Range::default())?.is_empty() {
        return Err(ReplayError::Empty(from.to_owned()));
    }
    if resume {
        capture::resume_from(consumer, from, &mut bounds)?;
    }
    Ok(bounds)
}

/// The sha256 of a stored version named `name@version`.
fn stored_sha256(state: &State, id: &str) -> Result<String, ReplayError> {
    state
        .uploads
        .get(id)
        .map(|u| u.plugin.sha256.clone())
        .ok_or_else(|| ReplayError::NotStored(id.to_owned()))
}

/// Pass 1: the (cohort, sha256) pairs the range needs (all must be at hand before any work);
/// `through` replaces every recorded version.
fn needed(
    consumer: &BaseConsumer,
    from: &str,
    bounds: &[(i32, i64, i64)],
    through: Option<&str>,
) -> Result<BTreeSet<(String, String)>, ReplayError> {
    let mut needed = BTreeSet::new();
    // A range is long runs of one version: only a change of pair is looked at closely.
    let mut last: (Vec<u8>, Vec<u8>) = Default::default();
    capture::read::<ReplayError>(consumer, from, bounds, |m| {
        if let (Some(cohort), Some(sha)) = (
            capture::header_bytes(m, h::COHORT),
            capture::header_bytes(m, h::PLUGIN_SHA256),
        ) && (cohort, sha) != (last.0.as_slice(), last.1.as_slice())
        {
            last = (cohort.to_vec(), sha.to_vec());
            let cohort = String::from_utf8_lossy(cohort).into_owned();
            let sha = String::from_utf8_lossy(sha).into_owned();
            needed.insert((cohort, through.map_or(sha, str::to_owned)));
        }
        Ok(())
    })?;
    Ok(needed)
}

/// Every needed version, loaded and configured for its cohort.
fn runners(
    config: &Config,
    host: &Host,
    opened: &jobs::Opened,
    needed: &BTreeSet<(String, String)>,
) -> Result<HashMap<(String, String), Runner>, ReplayError> {
    let mut runners = HashMap::new();
    for (cohort, sha) in needed {
        let ci = config
            .cohorts
            .iter()
            .position(|c| &c.name == cohort)
            .ok_or_else(|| ReplayError::UnknownCohort(cohort.clone()))?;
        let bytes = opened.store.get(sha)?.ok_or_else(|| {
            let what = opened
                .state
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
                store: opened.store.dir().display().to_string(),
            }
        })?;
        let c: &Cohort = &config.cohorts[ci];
        let (plugin, configured) = jobs::prepare(host, &bytes, c, |p| {
            format!("replay:{cohort}:{}", p.info().id())
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
    Ok(runners)
}

/// Verify: what was published, by message id (the runners' output topics and the
/// quarantine).
fn published(
    config: &Config,
    consumer: &BaseConsumer,
    runners: &HashMap<(String, String), Runner>,
) -> Result<HashMap<String, Published>, ReplayError> {
    let mut published: HashMap<String, Published> = HashMap::new();
    let topics: BTreeSet<&str> = runners
        .values()
        .map(|r| config.cohorts[r.cohort].output_topic.as_str())
        .collect();
    for t in topics {
        let b = capture::offsets(consumer, t, &Range::default())?;
        capture::read::<ReplayError>(consumer, t, &b, |m| {
            if let Some(id) = capture::header(m, h::MESSAGE_ID) {
                let v = m.payload().unwrap_or_default();
                let datum = v.get(5..).unwrap_or_default().to_vec();
                published.entry(id).or_default().records.push(datum);
            }
            Ok(())
        })?;
    }
    let q = &config.output.quarantine_topic;
    let b = capture::offsets(consumer, q, &Range::default())?;
    capture::read::<ReplayError>(consumer, q, &b, |m| {
        if let (Some(id), Some(code)) = (
            capture::header(m, h::MESSAGE_ID),
            capture::header(m, h::ERROR_CODE),
        ) {
            published.entry(id).or_default().quarantine = Some(code);
        }
        Ok(())
    })?;
    Ok(published)
}

/// `--to`: the producer and, per runner, a one-cohort topology writing to the target topic.
struct Target {
    sink: Sink,
    topologies: HashMap<(String, String), Topology>,
    /// Whether quarantine outcomes are written (`--quarantine-to`) or only counted.
    quarantines: bool,
}

impl Target {
    async fn open(
        config: &Config,
        runners: &HashMap<(String, String), Runner>,
        to: &str,
        quarantine_to: Option<&str>,
    ) -> Result<Target, ReplayError> {
        let sink = Sink::new(&config.kafka, "replay")?;
        let mut topics = vec![(to.to_owned(), "--to".to_owned())];
        if let Some(q) = quarantine_to {
            topics.push((q.to_owned(), "--quarantine-to".to_owned()));
        }
        sink.check_topics(&topics).await?;
        let registry = RegistryClient::for_config(&config.registry);
        let mut topologies = HashMap::new();
        for (key, r) in runners {
            let c = &config.cohorts[r.cohort];
            let quarantine = quarantine_to.unwrap_or_default().to_owned();
            let topology =
                jobs::one_cohort(config, &registry, (c, &r.plugin), to, quarantine, false).await?;
            topologies.insert(key.clone(), topology);
        }
        Ok(Target {
            sink,
            topologies,
            quarantines: quarantine_to.is_some(),
        })
    }
}

/// Pass 2: the range's messages through their versions, in batches as live, each outcome
/// verified or planned into writes.
struct Pass<'a> {
    through: Option<&'a str>,
    runners: &'a HashMap<(String, String), Runner>,
    published: &'a HashMap<String, Published>,
    target: Option<&'a Target>,
    summary: Summary,
    /// Writes planned and not yet sent.
    pending: Vec<Write>,
    writer: jobs::Writer<'a>,
}

impl Pass<'_> {
    /// The runner's key of a captured message: its cohort and the version it goes through
    /// (`None`: it was not routed when captured).
    fn key(&self, raw: &Captured) -> Option<(String, String)> {
        match (&raw.cohort, &raw.sha256) {
            (Some(c), Some(sha)) => Some((c.clone(), self.through.unwrap_or(sha).to_owned())),
            _ => None,
        }
    }

    /// Transform `batch` (emptied), one plugin call per version for the whole batch, and
    /// verify or plan each outcome.
    fn transform(&mut self, batch: &mut Vec<Captured>) {
        let keys: Vec<Option<(String, String)>> = batch.iter().map(|raw| self.key(raw)).collect();
        let mut groups: BTreeMap<&(String, String), Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(k) = k {
                groups.entry(k).or_default().push(i);
            }
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        for (k, idx) in groups {
            // Lent to the plugin and given back (process leaves them unchanged).
            let mut msgs: Vec<Message> = idx
                .iter()
                .map(|&i| std::mem::take(&mut batch[i].message))
                .collect();
            let results = self.runners[k].configured.process(&mut msgs);
            for ((i, o), m) in idx.iter().zip(results).zip(msgs) {
                outcomes[*i] = Some(o);
                batch[*i].message = m;
            }
        }
        for ((raw, key), outcome) in batch.drain(..).zip(keys).zip(outcomes) {
            let (Some(key), Some(outcome)) = (key, outcome) else {
                self.summary.unrouted += 1;
                continue;
            };
            self.take(raw, &key, outcome);
        }
    }

    /// One replayed outcome: compared with what was published, or planned into writes.
    fn take(&mut self, raw: Captured, key: &(String, String), outcome: Outcome) {
        let r = &self.runners[key];
        self.summary.replayed += 1;
        if let Outcome::Fail { .. } = &outcome {
            self.summary.failed += 1;
        }
        let Some(target) = self.target else {
            verify(&mut self.summary, self.published, &raw, r, &outcome);
            return;
        };
        if matches!(outcome, Outcome::Reject { .. } | Outcome::Fail { .. }) {
            self.summary.quarantined += 1;
            if !target.quarantines {
                return;
            }
        }
        let input = Input {
            id: raw.id,
            message: raw.message,
            retained: raw.retained,
            oversize: None,
        };
        let mut d = target.topologies[key].plan(input, Some(0), Some(outcome));
        if let weir_core::plan::Next::Send { writes, .. } = d.start() {
            for (kind, w) in writes {
                if kind == Kind::Record {
                    self.summary.written += 1;
                }
                self.pending.push(w);
            }
        }
        // A batch's records may be many and large: what is held stays bounded.
        if jobs::send_due(&self.pending) {
            self.send(false);
        }
    }

    /// Send what is planned; with `drain`, wait until Kafka answered every write.
    fn send(&mut self, drain: bool) {
        self.summary.failed += self.writer.send(&mut self.pending, drain);
    }
}

/// Reading the range for pass 2, recording progress for a resumable replay and stopping on
/// a signal.
struct Read<'a> {
    consumer: &'a BaseConsumer,
    from: &'a str,
    bounds: &'a [(i32, i64, i64)],
    /// Progress is kept in the replay's consumer group (`--resume`).
    resumable: bool,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl Read<'_> {
    /// Run the range through `pass`, in batches of 100.
    fn through(
        &self,
        pass: &mut Pass<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ReplayError> {
        let total: u64 = self.bounds.iter().map(|(_, s, e)| (e - s) as u64).sum();
        let mut batch: Vec<Captured> = Vec::with_capacity(100);
        // Done up to (exclusive) per partition, recorded after each batch is written.
        let mut done_to: BTreeMap<i32, i64> = BTreeMap::new();
        let mut since_recorded = 0usize;
        let read = capture::read(self.consumer, self.from, self.bounds, |m| {
            done_to.insert(m.partition(), m.offset() + 1);
            batch.push(capture::captured(m));
            let stop = self.stop.load(std::sync::atomic::Ordering::Relaxed);
            if batch.len() >= 100 || stop {
                since_recorded += batch.len();
                pass.transform(&mut batch);
                // Progress is recorded only once everything before it is written and
                // acknowledged; after a write that failed for good it is not recorded
                // again, so a resumed run goes back to before the failure instead of
                // skipping it.
                let checkpoint = self.resumable && (since_recorded >= 5_000 || stop);
                pass.send(checkpoint);
                if checkpoint && pass.summary.failed == 0 {
                    self.record(&done_to)?;
                    since_recorded = 0;
                }
                progress(pass.summary.replayed + pass.summary.unrouted, total);
            }
            if stop {
                return Err(ReplayError::Interrupted);
            }
            Ok(())
        });
        match read {
            Ok(()) => {}
            Err(ReplayError::Interrupted) => pass.summary.interrupted = true,
            Err(e) => return Err(e),
        }
        pass.transform(&mut batch);
        pass.send(true);
        if pass.summary.failed == 0 {
            self.record(&done_to)?;
        }
        progress(pass.summary.replayed + pass.summary.unrouted, total);
        Ok(())
    }

    fn record(&self, done_to: &BTreeMap<i32, i64>) -> Result<(), ReplayError> {
        if !self.resumable {
            return Ok(());
        }
        Ok(capture::record_progress(self.consumer, self.from, done_to)?)
    }
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

#[cfg(test)]
mod tests {
    use super::live_topic;
    use crate::config::Config;

    #[test]
    fn every_topic_weir_run_writes_or_reads_is_live() {
        let text = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "plant"
subscriptions = ["$share/weir/plant/#"]
slots = 3
[kafka]
bootstrap = "127.0.0.1:9092"
[registry]
url = "http://127.0.0.1:8081"
[output]
raw_topic = "telemetry.raw"
[plugins]
dir = "plugins"
[[cohort]]
name = "t"
topic = "plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "telemetry.thermostat"
"#;
        let config = Config::parse("weir.toml", text, &[]).unwrap();
        let live = |t: &str| live_topic(&config, t);
        assert_eq!(
            live("telemetry.thermostat").as_deref(),
            Some("cohort[0].output_topic")
        );
        assert_eq!(live("telemetry.raw").as_deref(), Some("output.raw_topic"));
        assert_eq!(
            live(&config.output.quarantine_topic).as_deref(),
            Some("output.quarantine_topic")
        );
        assert_eq!(
            live(&config.plugins.control_topic).as_deref(),
            Some("plugins.control_topic")
        );
        assert_eq!(live("weir.slots.plant").as_deref(), Some("mqtt.slots"));
        assert_eq!(live("replayed.thermostat"), None);
    }
}
