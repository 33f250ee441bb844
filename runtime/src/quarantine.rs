//! `weir quarantine list | show | redrive`: what is in the quarantine topic, and re-running
//! entries through a plugin version.
//!
//! A redrive publishes what now succeeds to the cohort's governed topic with its provenance
//! (`weir.redrive.from` = the quarantine entry's partition:offset) and the message's own id;
//! what still fails goes back to quarantine with `weir.redrive.count` incremented. An entry
//! at `--max-redrives` is refused, never looped. Progress is kept in a consumer group named
//! after the selection, so a redrive resumes where the last one stopped and a second run
//! finds only what was quarantined since.

use crate::config::Config;
use crate::control::Control;
use crate::encode::registry::RegistryClient;
use crate::headers as h;
use crate::lifecycle::cohort_plan;
use crate::plan::{Input, Kind, Next, Topology};
use crate::sink::{Sink, Write};
use crate::store::Store;
use crate::transform::{Host, Message, Outcome};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

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
}

fn hdr(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|x| x.key == name)
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn matches(m: &BorrowedMessage<'_>, f: &Filter) -> bool {
    let ts = m.timestamp().to_millis();
    f.cohort
        .as_ref()
        .is_none_or(|c| hdr(m, h::COHORT).as_ref() == Some(c))
        && f.code
            .as_ref()
            .is_none_or(|c| hdr(m, h::ERROR_CODE).as_ref() == Some(c))
        && f.since_ms.is_none_or(|s| ts.is_some_and(|t| t >= s))
        && f.until_ms.is_none_or(|u| ts.is_some_and(|t| t < u))
}

fn consumer(config: &Config, group: &str) -> Result<BaseConsumer, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.message.max.bytes", "4194304");
    c.create()
        .map_err(|e| format!("cannot create a Kafka consumer: {e}"))
}

/// Read the quarantine topic from `start` (per partition) to its current end.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    start: impl Fn(i32) -> i64,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<(), String>,
) -> Result<Vec<(i32, i64)>, String> {
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot read the metadata of {topic}: {e}; check kafka.bootstrap"))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut ends = Vec::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("cannot read the offsets of {topic}[{p}]: {e}"))?;
        let from = start(p).max(low);
        ends.push((p, high));
        if from >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(from))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut next = from;
        let mut idle = std::time::Instant::now();
        while next < high {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    idle = std::time::Instant::now();
                    if m.offset() < high {
                        f(&m)?;
                    }
                }
                Some(Err(e)) => return Err(format!("reading {topic}[{p}]: {e}")),
                None if idle.elapsed() > Duration::from_secs(60) => {
                    return Err(format!("reading {topic}[{p}]: nothing for 60 s at {next}"));
                }
                None => {}
            }
        }
    }
    Ok(ends)
}

/// Counts of matching entries by cohort and code.
pub fn list(config: &Config, filter: &Filter) -> Result<Listing, String> {
    let c = consumer(
        config,
        &format!("weir-quarantine-list-{}", rand::random::<u64>()),
    )?;
    let mut out = Listing::default();
    scan(
        &c,
        &config.output.quarantine_topic,
        |_| 0,
        |m| {
            if matches(m, filter) {
                out.total += 1;
                *out.groups
                    .entry(hdr(m, h::COHORT).unwrap_or_else(|| "-".into()))
                    .or_default()
                    .entry(hdr(m, h::ERROR_CODE).unwrap_or_else(|| "-".into()))
                    .or_default() += 1;
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Matching entries, at most `limit`.
pub fn show(config: &Config, filter: &Filter, limit: usize) -> Result<Vec<Entry>, String> {
    let c = consumer(
        config,
        &format!("weir-quarantine-show-{}", rand::random::<u64>()),
    )?;
    let mut out = Vec::new();
    scan(
        &c,
        &config.output.quarantine_topic,
        |_| 0,
        |m| {
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
        },
    )?;
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

/// Redrive the matching entries (not `dry_run`: only count what would happen).
pub async fn redrive(
    config: &Config,
    host: Host,
    filter: &Filter,
    through: Option<&str>,
    max_redrives: u32,
    dry_run: bool,
) -> Result<Redriven, String> {
    let store = Store::open(&config.plugins.store).map_err(|e| e.to_string())?;
    let control = Control::open(&config.kafka, &config.plugins.control_topic, store.clone())
        .await
        .map_err(|e| e.to_string())?;
    let state = control.state();
    let registry = RegistryClient::new(&config.registry.url);
    // The version per cohort: --through, else the cohort's pin, else weir.toml's.
    let mut plans = BTreeMap::new();
    for (ci, c) in config.cohorts.iter().enumerate() {
        if filter.cohort.as_ref().is_some_and(|f| f != &c.name) {
            continue;
        }
        let id = match (through, state.pins.get(&c.name)) {
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
        let upload = state.uploads.get(&id).ok_or_else(|| {
            format!("{id} is not in the plugin store; push it first (weir plugin push FILE.wasm)")
        })?;
        let bytes = store
            .get(&upload.plugin.sha256)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{id} (sha256 {}) is not in the local store",
                    upload.plugin.sha256
                )
            })?;
        let plugin = host.load(&bytes).map_err(|e| e.to_string())?;
        let settings = c
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let configured = plugin
            .configure(settings, format!("redrive:{}:{id}", c.name))
            .map_err(|e| format!("{id} refused cohort {:?}'s config: {e}", c.name))?;
        let info = plugin.info();
        let record_name = crate::encode::registry::record_full_name(&info.schema)
            .unwrap_or_else(|| info.name.clone());
        let subject = crate::encode::registry::subject(
            config.registry.subject_strategy,
            &c.output_topic,
            &record_name,
        );
        let schema_id = if dry_run {
            0
        } else {
            registry
                .schema_id(&subject, &info.schema, config.registry.auto_register)
                .await
                .map_err(|e| e.to_string())?
        };
        let plan = cohort_plan(c, &plugin, schema_id, &c.output_topic)?;
        let topo = Topology {
            cohorts: vec![plan],
            rules: vec![],
            quarantine_topic: config.output.quarantine_topic.clone(),
            raw_topic: None,
        };
        plans.insert(c.name.clone(), (ci, topo, configured));
    }

    let topic = config.output.quarantine_topic.clone();
    let group_id = group(config, filter, through);
    let c = consumer(config, &group_id)?;
    // Where this selection's last redrive stopped.
    let committed: BTreeMap<i32, i64> = {
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in md
            .topics()
            .first()
            .map(|t| t.partitions())
            .unwrap_or_default()
        {
            tpl.add_partition(&topic, p.id());
        }
        c.committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| format!("cannot read the redrive's progress: {e}"))?
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    };
    let sink = if dry_run {
        None
    } else {
        Some(Sink::new(&config.kafka).map_err(|e| e.to_string())?)
    };
    let mut out = Redriven::default();
    let mut writes: Vec<Write> = Vec::new();
    let ends = scan(
        &c,
        &topic,
        |p| committed.get(&p).copied().unwrap_or(0),
        |m| {
            if !matches(m, filter) {
                return Ok(());
            }
            out.selected += 1;
            let Some((_, topo, configured)) = hdr(m, h::COHORT).and_then(|c| plans.get(&c)) else {
                out.skipped += 1;
                return Ok(());
            };
            let count: u32 = hdr(m, REDRIVE_COUNT)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if count >= max_redrives {
                out.refused += 1;
                return Ok(());
            }
            if hdr(m, h::PAYLOAD_TRUNCATED).is_some() {
                out.skipped += 1;
                return Ok(());
            }
            let properties = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .filter_map(|x| {
                            let n = x.key.strip_prefix(h::USER_PROPERTY_PREFIX)?;
                            Some((
                                n.to_owned(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let message = Message {
                topic: hdr(m, h::MQTT_TOPIC).unwrap_or_default(),
                payload: m.payload().unwrap_or_default().to_vec(),
                properties,
                content_type: hdr(m, h::MQTT_CONTENT_TYPE),
                received_at_ms: hdr(m, h::RECEIVED_AT)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default(),
            };
            let mut batch = vec![message.clone()];
            let outcome = configured.process(&mut batch).pop().expect("one outcome");
            let succeeded = matches!(outcome, Outcome::Emit(_) | Outcome::Skip);
            if succeeded {
                out.published += 1;
            } else {
                out.requarantined += 1;
            }
            if dry_run {
                return Ok(());
            }
            let input = Input {
                id: hdr(m, h::MESSAGE_ID).unwrap_or_default(),
                message,
                retained: hdr(m, h::MQTT_RETAINED).is_some(),
                oversize: None,
            };
            let mut d = topo.plan(input, Some(0), Some(outcome));
            if let Next::Send { writes: ws, .. } = d.start() {
                let from = format!("{}:{}", m.partition(), m.offset());
                for (kind, mut w) in ws {
                    w.headers
                        .push((REDRIVE_FROM.to_owned(), from.clone().into_bytes()));
                    if kind == Kind::Quarantine {
                        w.headers.push((
                            REDRIVE_COUNT.to_owned(),
                            (count + 1).to_string().into_bytes(),
                        ));
                    }
                    writes.push(w);
                }
            }
            Ok(())
        },
    )?;
    if let Some(sink) = &sink {
        let mut futures = Vec::with_capacity(writes.len());
        for w in &writes {
            futures.push(sink.send(w).await);
        }
        for f in futures {
            let ok = match f {
                Ok(f) => matches!(f.await, Ok(Ok(_))),
                Err(_) => false,
            };
            if !ok {
                return Err("Kafka did not take a redriven write; nothing was marked done — run the redrive again".into());
            }
        }
        sink.flush(Duration::from_secs(30));
        // Done up to where the scan began its read: the next redrive starts there.
        let mut tpl = TopicPartitionList::new();
        for (p, end) in ends {
            tpl.add_partition_offset(&topic, p, Offset::Offset(end))
                .map_err(|e| e.to_string())?;
        }
        c.commit(&tpl, CommitMode::Sync)
            .map_err(|e| format!("cannot record the redrive's progress: {e}"))?;
    }
    Ok(out)
}
