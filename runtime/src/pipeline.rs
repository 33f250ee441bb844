//! `weir run`: wires the stages — source → route → transform → encode → sink → ack.
//!
//! The pipeline task takes messages from the source in batches, routes them to cohorts,
//! runs each cohort's plugin, and enqueues every Kafka write the message causes (records, or
//! its quarantine entry; plus the raw capture when configured) in arrival order. A
//! per-batch task waits for Kafka's acknowledgements and reports each message done to the
//! acker, which sends PUBACKs in arrival order. A semaphore of `max_in_flight` permits,
//! held from arrival until the ack, bounds everything in between: when Kafka stalls, the
//! pipeline stops taking messages and the broker keeps the backlog in the session.

use crate::ack::AckQueue;
use crate::config::Config;
use crate::encode::{self, registry::RegistryClient};
use crate::route::{self, KeyTemplate, Rule};
use crate::sink::{Sink, Write};
use crate::source::{AckToken, Source};
use crate::transform::{Configured, Host, Limits, Message, Outcome, Plugin};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Quarantine codes weir itself assigns (plugin rejections keep the plugin's own code).
pub mod codes {
    /// No cohort matched the message.
    pub const UNROUTED: &str = "route.unmatched";
    /// Kafka refused a record write; the message went to quarantine instead.
    pub const PRODUCE_FAILED: &str = "sink.produce-failed";
}

/// What the pipeline has done so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages received.
    pub received: AtomicU64,
    /// Of those, redelivered by the broker (DUP).
    pub redelivered: AtomicU64,
    /// Records written to governed topics.
    pub records: AtomicU64,
    /// Messages acknowledged to the broker.
    pub acked: AtomicU64,
    /// Quarantined messages per code.
    pub quarantined: Mutex<BTreeMap<String, u64>>,
    /// Records per cohort.
    pub per_cohort: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn summary(&self) -> String {
        format!(
            "received {} (redelivered {}), records {} {:?}, quarantined {:?}, acked {}",
            self.received.load(Ordering::Relaxed),
            self.redelivered.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
            self.per_cohort.lock().expect("stats lock"),
            self.quarantined.lock().expect("stats lock"),
            self.acked.load(Ordering::Relaxed),
        )
    }
}

/// A cohort ready to run.
struct Cohort {
    name: String,
    plugin: Configured,
    output_topic: String,
    key: KeyTemplate,
    schema_id: u32,
    /// `weir.plugin`, `weir.plugin.sha256`, `weir.cohort`.
    identity: Vec<(String, Vec<u8>)>,
}

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config names something that is not there or not usable.
    #[error("{file}: {key}: {problem}")]
    Config {
        /// The config file.
        file: String,
        /// The key.
        key: String,
        /// What, and the fix.
        problem: String,
    },
    /// Anything else that stops start-up.
    #[error("{0}")]
    Other(String),
}

/// Load every `.wasm` in `dir`, indexed by `name@version`.
fn load_plugins(
    host: &Host,
    dir: &Path,
    file: &str,
) -> Result<HashMap<String, Plugin>, StartError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StartError::Config {
        file: file.into(),
        key: "plugins.dir".into(),
        problem: format!(
            "cannot read {}: {e}; build the plugins (cargo xtask plugins) or fix the path",
            dir.display()
        ),
    })?;
    let mut plugins: HashMap<String, Plugin> = HashMap::new();
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
    {
        match host.load_file(&path) {
            Ok(p) => {
                let id = p.info().id();
                if let Some(other) = plugins.get(&id)
                    && other.info().sha256 != p.info().sha256
                {
                    return Err(StartError::Config {
                        file: file.into(),
                        key: "plugins.dir".into(),
                        problem: format!(
                            "two different files claim to be {id} (sha256 {} and {}); a version must be immutable — bump the version of one",
                            other.info().sha256,
                            p.info().sha256
                        ),
                    });
                }
                tracing::info!(plugin = %id, sha256 = %p.info().sha256, path = %path.display(), "plugin loaded");
                plugins.insert(id, p);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping a file that is not a usable plugin")
            }
        }
    }
    Ok(plugins)
}

/// Register (or look up) a schema, retrying while the registry is unreachable.
async fn schema_id(
    client: &RegistryClient,
    subject: &str,
    schema: &str,
    register: bool,
) -> Result<u32, StartError> {
    let mut attempt = 0u32;
    loop {
        match client.schema_id(subject, schema, register).await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_transient() => {
                attempt += 1;
                let wait = Duration::from_millis(200 * u64::from(attempt.min(25)));
                tracing::warn!(error = %e, attempt, retry_in = ?wait, "schema registry unavailable at start-up; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(StartError::Other(e.to_string())),
        }
    }
}

/// Everything `run` needs, built and checked at start-up.
pub struct Prepared {
    config: Config,
    cohorts: Vec<Cohort>,
    rules: Vec<Rule>,
}

/// Build the cohorts: resolve each pinned plugin to its sha256, check its config, and get
/// its schema id from the registry.
pub async fn prepare(
    config: Config,
    file: &str,
    limits: Limits,
    cache: Option<&Path>,
) -> Result<Prepared, StartError> {
    let host = Host::new(limits, cache).map_err(|e| StartError::Other(e.to_string()))?;
    let plugins = load_plugins(&host, &config.plugins.dir, file)?;
    let registry = RegistryClient::new(&config.registry.url);
    let mut cohorts = Vec::new();
    let mut rules = Vec::new();
    for (i, c) in config.cohorts.iter().enumerate() {
        let plugin = plugins.get(&c.plugin).ok_or_else(|| {
            let mut found: Vec<&String> = plugins.keys().collect();
            found.sort();
            StartError::Config {
                file: file.into(),
                key: format!("cohort[{i}].plugin"),
                problem: format!(
                    "{} is not in {} (found: {:?}); build it or pin a version that is there",
                    c.plugin,
                    config.plugins.dir.display(),
                    found
                ),
            }
        })?;
        let settings: Vec<(String, String)> = c
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let configured = plugin
            .configure(settings, format!("{}:{}", c.name, c.plugin))
            .map_err(|e| StartError::Config {
                file: file.into(),
                key: format!("cohort[{i}].config"),
                problem: format!("{} refused its config: {e}", c.plugin),
            })?;
        let info = plugin.info();
        let record_name =
            encode::registry::record_full_name(&info.schema).unwrap_or_else(|| info.name.clone());
        let subject = encode::registry::subject(
            config.registry.subject_strategy,
            &c.output_topic,
            &record_name,
        );
        let schema_id = schema_id(
            &registry,
            &subject,
            &info.schema,
            config.registry.auto_register,
        )
        .await?;
        tracing::info!(cohort = %c.name, plugin = %c.plugin, sha256 = %info.sha256, %subject, schema_id, "cohort ready");
        cohorts.push(Cohort {
            name: c.name.clone(),
            plugin: configured,
            output_topic: c.output_topic.clone(),
            key: KeyTemplate::parse(&c.key).map_err(StartError::Other)?,
            schema_id,
            identity: vec![
                ("weir.plugin".into(), info.id().into_bytes()),
                (
                    "weir.plugin.sha256".into(),
                    info.sha256.clone().into_bytes(),
                ),
                ("weir.cohort".into(), c.name.clone().into_bytes()),
            ],
        });
        rules.push(Rule {
            filter: c.topic.clone(),
            properties: c
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    Ok(Prepared {
        config,
        cohorts,
        rules,
    })
}

/// Headers every write of a message carries: MQTT topic, receive time, user properties.
fn message_headers(m: &crate::transform::Message) -> Vec<(String, Vec<u8>)> {
    let mut h = Vec::with_capacity(2 + m.properties.len());
    h.push(("weir.mqtt.topic".into(), m.topic.clone().into_bytes()));
    h.push((
        "weir.received_at".into(),
        m.received_at_ms.to_string().into_bytes(),
    ));
    for (k, v) in &m.properties {
        h.push((format!("mqtt.{k}"), v.clone().into_bytes()));
    }
    h
}

/// The quarantine entry for a message: the original payload, untouched, and headers that
/// name the failure.
fn quarantine(
    topic: &str,
    m: &crate::transform::Message,
    cohort: Option<&Cohort>,
    stage: &str,
    code: &str,
    message: &str,
) -> Write {
    let mut headers = vec![
        ("weir.error.stage".to_owned(), stage.as_bytes().to_vec()),
        ("weir.error.code".to_owned(), code.as_bytes().to_vec()),
        ("weir.error.message".to_owned(), message.as_bytes().to_vec()),
    ];
    if let Some(c) = cohort {
        headers.extend(c.identity.iter().cloned());
    }
    headers.extend(message_headers(m));
    Write {
        topic: topic.to_owned(),
        key: Some(m.topic.clone().into_bytes()),
        value: m.payload.clone(),
        headers,
    }
}

/// Where a failure code belongs.
fn stage_of(code: &str) -> &'static str {
    if code == crate::transform::codes::SCHEMA_VIOLATION {
        "encode"
    } else {
        "transform"
    }
}

/// The writes one message causes, in order, and what they mean for the stats.
struct Planned {
    writes: Vec<Write>,
    records: u64,
    cohort: Option<usize>,
    quarantine_code: Option<String>,
}

fn plan(
    p: &Prepared,
    m: &crate::transform::Message,
    cohort: Option<usize>,
    outcome: Option<&Outcome>,
) -> Planned {
    let q = &p.config.output.quarantine_topic;
    let mut writes = Vec::new();
    if let Some(raw) = &p.config.output.raw_topic {
        writes.push(Write {
            topic: raw.clone(),
            key: Some(m.topic.clone().into_bytes()),
            value: m.payload.clone(),
            headers: message_headers(m),
        });
    }
    let quarantined =
        |writes: &mut Vec<Write>, c: Option<&Cohort>, stage: &str, code: &str, why: &str| {
            writes.push(quarantine(q, m, c, stage, code, why));
            Planned {
                writes: std::mem::take(writes),
                records: 0,
                cohort,
                quarantine_code: Some(code.to_owned()),
            }
        };
    let Some(ci) = cohort else {
        return quarantined(
            &mut writes,
            None,
            "route",
            codes::UNROUTED,
            &format!(
                "no cohort matches topic {:?} with these user properties",
                m.topic
            ),
        );
    };
    let c = &p.cohorts[ci];
    match outcome.expect("routed messages have an outcome") {
        Outcome::Skip => Planned {
            writes,
            records: 0,
            cohort,
            quarantine_code: None,
        },
        Outcome::Reject { code, reason } => {
            quarantined(&mut writes, Some(c), "transform", code, reason)
        }
        Outcome::Fail { code, reason } => {
            quarantined(&mut writes, Some(c), stage_of(code), code, reason)
        }
        Outcome::Emit(records) => {
            let base = message_headers(m);
            let n = records.len() as u64;
            for r in records {
                let key = c.key.render(&m.topic, r.key.as_deref(), |field| {
                    let v = c.plugin.plugin().schema().decode_to_json(&r.value).ok()?;
                    match v.get(field)? {
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    }
                });
                let mut headers = c.identity.clone();
                headers.extend(base.iter().cloned());
                headers.extend(
                    r.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
                );
                writes.push(Write {
                    topic: c.output_topic.clone(),
                    key: key.map(String::into_bytes),
                    value: encode::frame(c.schema_id, &r.value),
                    headers,
                });
            }
            Planned {
                writes,
                records: n,
                cohort,
                quarantine_code: None,
            }
        }
    }
}

enum AckEvent {
    Arrived(Box<AckToken>),
    Done(u64),
}

/// Run until `shutdown` resolves; then stop reading, finish and acknowledge what is in
/// flight, disconnect, and return the stats.
pub async fn run(
    p: Prepared,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Arc<Stats>, StartError> {
    let p = Arc::new(p);
    let sink = Sink::new(&p.config.kafka).map_err(|e| StartError::Config {
        file: "-".into(),
        key: "kafka".into(),
        problem: e.to_string(),
    })?;
    let (source, mut rx) =
        Source::start(&p.config.mqtt).map_err(|e| StartError::Other(e.to_string()))?;
    let stats = Arc::new(Stats::default());
    let in_flight = Arc::new(Semaphore::new(usize::from(p.config.mqtt.max_in_flight)));

    // The acker: PUBACKs in arrival order, each after all its message's writes.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<AckEvent>();
    let acker = {
        let (source, stats) = (source.clone(), stats.clone());
        tokio::spawn(async move {
            let mut queue = AckQueue::default();
            while let Some(ev) = ack_rx.recv().await {
                let ready = match ev {
                    AckEvent::Arrived(t) => {
                        queue.arrived(*t);
                        continue;
                    }
                    AckEvent::Done(seq) => queue.done(seq),
                };
                for token in ready {
                    match source.ack(&token).await {
                        Ok(true) => {
                            stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "cannot send PUBACK"),
                    }
                }
            }
        })
    };

    let batch_size = p.config.output.batch_size;
    let batch_wait = Duration::from_millis(p.config.output.batch_wait_ms);
    let mut next_seq = 0u64;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    'main: loop {
        // Collect a batch: wait for the first message, then take more until full or the
        // batch wait runs out.
        // (sequence number, message, in-flight permit). The message is lent to the
        // transform without copying it: taken out for the plugin call, then put back.
        let mut batch: Vec<(u64, Option<Message>, tokio::sync::OwnedSemaphorePermit)> = Vec::new();
        let first = tokio::select! {
            () = &mut shutdown => break 'main,
            _ = report.tick() => {
                tracing::info!("{}", stats.summary());
                continue;
            }
            m = rx.recv() => m,
        };
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + batch_wait;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let permit = tokio::select! {
                () = &mut shutdown => break 'main,
                permit = in_flight.clone().acquire_owned() => permit.expect("semaphore open"),
            };
            stats.received.fetch_add(1, Ordering::Relaxed);
            if m.dup {
                stats.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            let _ = ack_tx.send(AckEvent::Arrived(Box::new(m.ack.clone())));
            batch.push((next_seq, Some(m.message), permit));
            next_seq += 1;
            if batch.len() >= batch_size {
                break;
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
        }

        // Route, then transform each cohort's share of the batch.
        let routes: Vec<Option<usize>> = batch
            .iter()
            .map(|(_, m, _)| {
                let m = m.as_ref().expect("present until the writes are planned");
                route::route(&p.rules, &m.topic, &m.properties)
            })
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        for (ci, cohort) in p.cohorts.iter().enumerate() {
            let idx: Vec<usize> = (0..batch.len())
                .filter(|&i| routes[i] == Some(ci))
                .collect();
            if idx.is_empty() {
                continue;
            }
            let group: Vec<Message> = idx
                .iter()
                .map(|&i| {
                    batch[i]
                        .1
                        .take()
                        .expect("each message routes to one cohort")
                })
                .collect();
            let results = tokio::task::block_in_place(|| cohort.plugin.process(&group));
            for ((i, o), m) in idx.into_iter().zip(results).zip(group) {
                outcomes[i] = Some(o);
                batch[i].1 = Some(m);
            }
        }

        // Enqueue every write in arrival order; a task per batch waits for Kafka.
        let mut waits = Vec::with_capacity(batch.len());
        for ((seq, m, permit), (cohort, outcome)) in
            batch.into_iter().zip(routes.into_iter().zip(outcomes))
        {
            let m = m.expect("put back after the transform");
            let planned = plan(&p, &m, cohort, outcome.as_ref());
            let mut futures = Vec::with_capacity(planned.writes.len());
            for w in &planned.writes {
                match sink.send(w).await {
                    Ok(f) => futures.push(f),
                    Err(e) => tracing::error!(error = %e, "Kafka write refused"),
                }
            }
            waits.push((seq, m, cohort, planned, futures, permit));
        }
        let (sink, stats, ack_tx, p) = (sink.clone(), stats.clone(), ack_tx.clone(), p.clone());
        tokio::spawn(async move {
            for (seq, message, cohort, planned, futures, permit) in waits {
                let mut failed = planned.writes.len() != futures.len();
                for f in futures {
                    match f.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => {
                            tracing::error!(error = %e, "Kafka did not accept a write");
                            failed = true;
                        }
                        Err(_) => failed = true,
                    }
                }
                if failed {
                    // Put the message in quarantine instead; only if that is acknowledged
                    // is the message acknowledged. Otherwise it stays unacknowledged and
                    // the broker redelivers it after a restart.
                    let c = cohort.map(|i| &p.cohorts[i]);
                    let w = quarantine(
                        &p.config.output.quarantine_topic,
                        &message,
                        c,
                        "sink",
                        codes::PRODUCE_FAILED,
                        "Kafka did not accept a write of this message",
                    );
                    let ok = match sink.send(&w).await {
                        Ok(f) => matches!(f.await, Ok(Ok(_))),
                        Err(_) => false,
                    };
                    if !ok {
                        tracing::error!(topic = %message.topic, "message could not be written to Kafka nor quarantined; leaving it unacknowledged");
                        continue;
                    }
                    *stats
                        .quarantined
                        .lock()
                        .expect("stats lock")
                        .entry(codes::PRODUCE_FAILED.into())
                        .or_default() += 1;
                } else {
                    stats.records.fetch_add(planned.records, Ordering::Relaxed);
                    if let (Some(ci), true) = (planned.cohort, planned.records > 0) {
                        *stats
                            .per_cohort
                            .lock()
                            .expect("stats lock")
                            .entry(p.cohorts[ci].name.clone())
                            .or_default() += planned.records;
                    }
                    if let Some(code) = planned.quarantine_code {
                        *stats
                            .quarantined
                            .lock()
                            .expect("stats lock")
                            .entry(code)
                            .or_default() += 1;
                    }
                }
                let _ = ack_tx.send(AckEvent::Done(seq));
                drop(permit);
            }
        });
    }

    // Drain: everything taken in is written and acknowledged before we disconnect.
    tracing::info!("stopping: finishing in-flight messages");
    let all = u32::from(p.config.mqtt.max_in_flight);
    let _ = in_flight.acquire_many(all).await;
    drop(ack_tx);
    let _ = acker.await;
    sink.flush(Duration::from_secs(10));
    source.disconnect().await;
    drop(rx);
    tracing::info!("stopped: {}", stats.summary());
    Ok(stats)
}
