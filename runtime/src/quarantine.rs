//! `weir quarantine list | show | redrive`: what is in the quarantine topic, and re-running
//! entries through a plugin version.
//!
//! A redrive publishes what now succeeds to the cohort's governed topic with its provenance
//! (`weir.redrive.from` = the quarantine entry's partition:offset) and the message's own id;
//! what still fails goes back to quarantine with `weir.redrive.count` incremented. An entry
//! at `--max-redrives` is refused, never looped. Progress is kept in a consumer group named
//! after the selection, so a redrive resumes where the last one stopped and a second run
//! finds only what was quarantined since.

use crate::capture::{self, CaptureError, Captured, Range};
use crate::config::Config;
use crate::encode::registry::RegistryClient;
use crate::jobs;
use crate::sink::Sink;
use crate::transform::{Configured, Host, Outcome};
use rdkafka::Message as _;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Headers};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use weir_core::headers as h;
use weir_core::plan::{Input, Kind, Next, Topology};
use weir_core::write::Write;

/// Provenance of a redriven record: the quarantine entry's `partition:offset`.
pub const REDRIVE_FROM: &str = "weir.redrive.from";
/// How many times an entry was redriven.
pub const REDRIVE_COUNT: &str = "weir.redrive.count";

/// Which entries.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this cohort.
    pub cohort: Option<String>,
    /// Only this code.
    pub code: Option<String>,
    /// Entries at or after, ms since the Unix epoch.
    pub since_ms: Option<i64>,
    /// Entries before.
    pub until_ms: Option<i64>,
}

/// One entry, as `show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, ms.
    pub timestamp_ms: Option<i64>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// The payload as text (lossy) and its size.
    pub payload: String,
    /// Payload size, bytes.
    pub size: usize,
}

/// Counts by cohort and code.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    /// `cohort → code → entries`.
    pub groups: BTreeMap<String, BTreeMap<String, u64>>,
    /// Entries matched.
    pub total: u64,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Redriven {
    /// Entries selected.
    pub selected: u64,
    /// Published to the governed topic.
    pub published: u64,
    /// Failed again: back to quarantine with the count incremented.
    pub requarantined: u64,
    /// At the redrive limit: left alone.
    pub refused: u64,
    /// With no cohort recorded (unrouted, oversize): not redrivable.
    pub skipped: u64,
    /// Records not written again because Kafka had them from the first attempt
    /// (`weir.error.records-published`, through the same version).
    pub already_published: u64,
}

fn matches(m: &BorrowedMessage<'_>, f: &Filter) -> bool {
    let ts = m.timestamp().to_millis();
    f.cohort
        .as_ref()
        .is_none_or(|c| capture::header(m, h::COHORT).as_ref() == Some(c))
        && f.code
            .as_ref()
            .is_none_or(|c| capture::header(m, h::ERROR_CODE).as_ref() == Some(c))
        && f.since_ms.is_none_or(|s| ts.is_some_and(|t| t >= s))
        && f.until_ms.is_none_or(|u| ts.is_some_and(|t| t < u))
}

/// Why a quarantine command cannot run.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// Reaching or reading Kafka failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The store or the control topic could not be opened, or a version prepared.
    #[error(transparent)]
    Job(#[from] jobs::JobError),
    /// The plugin store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The writer to Kafka could not be made.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// A version the redrive needs is not stored, and the fix.
    #[error("{0}")]
    Missing(String),
    /// Kafka did not take every redriven write.
    #[error(
        "Kafka did not take {0} redriven write(s); nothing was marked done — run the redrive again (entries already published are published again)"
    )]
    NotTaken(u64),
}

/// Read the quarantine topic to its current end — from where the consumer group's last run
/// stopped when `resume` — calling `f` on each entry; where it ended, per partition.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    resume: bool,
    f: impl FnMut(&BorrowedMessage<'_>) -> Result<(), QuarantineError>,
) -> Result<Vec<(i32, i64)>, QuarantineError> {
    let mut bounds = capture::offsets(consumer, topic, &Range::default())?;
    let ends = bounds.iter().map(|(p, _, end)| (*p, *end)).collect();
    if resume {
        capture::resume_from(consumer, topic, &mut bounds)?;
    }
    capture::read(consumer, topic, &bounds, f)?;
    Ok(ends)
}

/// Counts of matching entries by cohort and code.
pub fn list(config: &Config, filter: &Filter) -> Result<Listing, QuarantineError> {
    let c = capture::consumer(&config.kafka, None)?;
    let mut out = Listing::default();
    scan(&c, &config.output.quarantine_topic, false, |m| {
        if matches(m, filter) {
            out.total += 1;
            *out.groups
                .entry(capture::header(m, h::COHORT).unwrap_or_else(|| "-".into()))
                .or_default()
                .entry(capture::header(m, h::ERROR_CODE).unwrap_or_else(|| "-".into()))
                .or_default() += 1;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Matching entries, at most `limit`.
pub fn show(config: &Config, filter: &Filter, limit: usize) -> Result<Vec<Entry>, QuarantineError> {
    let c = capture::consumer(&config.kafka, None)?;
    let mut out = Vec::new();
    scan(&c, &config.output.quarantine_topic, false, |m| {
        if out.len() < limit && matches(m, filter) {
            let payload = m.payload().unwrap_or_default();
            out.push(Entry {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|x| {
                                (
                                    x.key.to_owned(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                payload: String::from_utf8_lossy(payload).into_owned(),
                size: payload.len(),
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// The consumer group a selection's redrives share.
fn group(config: &Config, filter: &Filter, through: Option<&str>) -> String {
    let key = format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}",
        config.output.quarantine_topic,
        filter.cohort,
        filter.code,
        filter.since_ms,
        filter.until_ms,
        through
    );
    format!("weir-redrive-{}", &hex::encode(Sha256::digest(key))[..16])
}

/// One selected quarantine entry and what it is redriven with.
struct Redrive<'a> {
    m: &'a BorrowedMessage<'a>,
    plans: &'a Plans,
    max_redrives: u32,
    dry_run: bool,
}

impl Redrive<'_> {
    /// Redrive the entry through its cohort's plan, its writes appended to `writes`, or
    /// count it as skipped (no cohort, a truncated payload) or refused (at the limit).
    fn redrive(&self, out: &mut Redriven, writes: &mut Vec<Write>) {
        let m = self.m;
        out.selected += 1;
        let Some((_, topo, configured)) =
            capture::header(m, h::COHORT).and_then(|c| self.plans.get(&c))
        else {
            out.skipped += 1;
            return;
        };
        let count: u32 = capture::header(m, REDRIVE_COUNT)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if count >= self.max_redrives {
            out.refused += 1;
            return;
        }
        if capture::header(m, h::PAYLOAD_TRUNCATED).is_some() {
            out.skipped += 1;
            return;
        }
        let Captured {
            id,
            message,
            retained,
            ..
        } = capture::captured(m);
        let mut batch = vec![message.clone()];
        let outcome = configured.process(&mut batch).pop().expect("one outcome");
        let succeeded = matches!(outcome, Outcome::Emit(_) | Outcome::Skip);
        if succeeded {
            out.published += 1;
        } else {
            out.requarantined += 1;
        }
        if self.dry_run {
            return;
        }
        let input = Input {
            id,
            message,
            retained,
            oversize: None,
        };
        self.plan(input, (topo, configured), (count, outcome), out, writes);
    }

    /// Plan the writes of the outcome: the records Kafka does not have yet, with the
    /// entry's provenance, and a quarantine entry with the redrive count.
    fn plan(
        &self,
        input: Input,
        (topo, configured): (&Topology, &Configured),
        (count, outcome): (u32, Outcome),
        out: &mut Redriven,
        writes: &mut Vec<Write>,
    ) {
        let m = self.m;
        let only = refused_records(m, configured);
        let mut d = topo.plan(input, Some(0), Some(outcome));
        if let Next::Send { writes: ws, .. } = d.start() {
            let from = format!("{}:{}", m.partition(), m.offset());
            let mut nth = 0usize;
            for (kind, mut w) in ws {
                if kind == Kind::Record {
                    nth += 1;
                    if only.as_ref().is_some_and(|o| !o.contains(&(nth - 1))) {
                        out.already_published += 1;
                        continue;
                    }
                }
                w.headers.push((REDRIVE_FROM.into(), from.clone().into()));
                if kind == Kind::Quarantine {
                    w.headers
                        .push((REDRIVE_COUNT.into(), (count + 1).to_string().into()));
                }
                writes.push(w);
            }
        }
    }
}

/// The records of an entry that Kafka refused, when it names them and the redrive goes
/// through the version that made them: the same version makes the same records, and Kafka
/// has the others from the first attempt. `None`: every record is written (at least once).
fn refused_records(m: &BorrowedMessage<'_>, configured: &Configured) -> Option<Vec<usize>> {
    let same_version = capture::header(m, h::PLUGIN_SHA256).as_deref()
        == Some(configured.plugin().info().sha256.as_str());
    capture::header(m, h::ERROR_RECORDS_REFUSED)
        .filter(|_| same_version)
        .and_then(|list| {
            list.split(',')
                .filter(|i| !i.is_empty())
                .map(|i| i.parse().ok())
                .collect()
        })
}

/// Per cohort name: its index, the one-cohort topology and the configured version.
type Plans = BTreeMap<String, (usize, Topology, Configured)>;

/// The version each selected cohort's entries go through (`--through`, else the cohort's
/// pin, else weir.toml's), prepared, with a one-cohort topology writing to the cohort's
/// output topic and the quarantine.
async fn redrive_plans(
    config: &Config,
    host: &Host,
    opened: &jobs::Opened,
    filter: &Filter,
    through: Option<&str>,
    dry_run: bool,
) -> Result<Plans, QuarantineError> {
    let registry = RegistryClient::for_config(&config.registry);
    let mut plans = BTreeMap::new();
    for (ci, c) in config.cohorts.iter().enumerate() {
        if filter.cohort.as_ref().is_some_and(|f| f != &c.name) {
            continue;
        }
        let id = match (through, opened.state.pins.get(&c.name)) {
            (Some(t), _) => t.to_owned(),
            (None, Some(pin)) => pin.plugin.id(),
            (None, None) => c.plugin.clone(),
        };
        // Without --cohort, --through applies to the cohorts that run that plugin.
        let name = |id: &str| id.split('@').next().unwrap_or_default().to_owned();
        if let Some(t) = through
            && filter.cohort.is_none()
            && name(t) != name(&c.plugin)
        {
            continue;
        }
        let upload = opened.state.uploads.get(&id).ok_or_else(|| {
            QuarantineError::Missing(format!(
                "{id} is not in the plugin store; push it first (weir plugin push FILE.wasm)"
            ))
        })?;
        let bytes = opened.store.get(&upload.plugin.sha256)?.ok_or_else(|| {
            QuarantineError::Missing(format!(
                "{id} (sha256 {}) is not in the local store",
                upload.plugin.sha256
            ))
        })?;
        let (plugin, configured) =
            jobs::prepare(host, &bytes, c, |_| format!("redrive:{}:{id}", c.name))?;
        let quarantine = config.output.quarantine_topic.clone();
        let topology = jobs::one_cohort(
            config,
            &registry,
            (c, &plugin),
            &c.output_topic,
            quarantine,
            dry_run,
        )
        .await?;
        plans.insert(c.name.clone(), (ci, topology, configured));
    }
    Ok(plans)
}

/// Redrive the matching entries (not `dry_run`: only count what would happen).
pub async fn redrive(
    config: &Config,
    host: Host,
    filter: &Filter,
    through: Option<&str>,
    max_redrives: u32,
    dry_run: bool,
) -> Result<Redriven, QuarantineError> {
    let opened = jobs::open(config).await?;
    let plans = redrive_plans(config, &host, &opened, filter, through, dry_run).await?;

    let topic = config.output.quarantine_topic.clone();
    let group_id = group(config, filter, through);
    let c = capture::consumer(&config.kafka, Some(&group_id))?;
    let sink = if dry_run {
        None
    } else {
        Some(Sink::new(&config.kafka, "redrive")?)
    };
    let mut out = Redriven::default();
    let mut writes: Vec<Write> = Vec::new();
    // Writes are sent as the scan goes (every 100 or 4 MiB), their answers awaited once more
    // than 10,000 wait, so memory stays bounded whatever the quarantine holds.
    let mut writer = jobs::Writer::new(sink.as_ref(), 10_000);
    let mut failed = 0u64;
    let ends = scan(&c, &topic, true, |m| {
        if matches(m, filter) {
            let entry = Redrive {
                m,
                plans: &plans,
                max_redrives,
                dry_run,
            };
            entry.redrive(&mut out, &mut writes);
        }
        if jobs::send_due(&writes) {
            failed += writer.send(&mut writes, false);
        }
        Ok(())
    })?;
    failed += writer.send(&mut writes, true);
    if let Some(sink) = &sink {
        if failed > 0 {
            return Err(QuarantineError::NotTaken(failed));
        }
        sink.flush(Duration::from_secs(30));
        // Done up to where the scan began its read: the next redrive starts there.
        capture::record_progress(&c, &topic, ends.iter().map(|(p, e)| (p, e)))?;
    }
    Ok(out)
}
