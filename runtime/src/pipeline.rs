//! `weir run`: wires the stages — source → route → transform → encode → sink → ack.
//!
//! - The **batcher** takes messages from the source until a batch is full or its wait ran
//!   out.
//! - The **pipeline task** routes the batch, runs each cohort's plugin on its share, and
//!   hands the batch over in arrival order to
//! - the **courier task** ([`crate::deliver`]), which asks the planning core
//!   ([`crate::plan`]) for each message's writes, enqueues them, takes Kafka's answers in
//!   bulk and feeds them back to the core (acknowledge, write again, or quarantine
//!   instead), and releases acknowledgements in arrival order (the watermark in
//!   [`crate::ack`]) to the source, which writes the PUBACKs. No future or task per
//!   message; transforming one batch overlaps writing the one before.
//!
//! Memory is bounded by `mqtt.max_in_flight`: the source takes an in-flight permit before
//! it hands a message on and releases it when the PUBACK is written. When Kafka stalls, the
//! source stops reading and the broker keeps the backlog in the session.

use crate::admin;
use crate::config::Config;
use crate::control::Control;
use crate::deliver::Courier;
use crate::lifecycle::{Lifecycle, LifecycleError, Switched};
use crate::metrics::{CohortLabel, Metrics};
use crate::plan::{Input, Topology};
use crate::sink::Sink;
use crate::source::{AckToken, Incoming, Source};
use crate::store::Store;
use crate::transform::{Configured, Host, Limits, Message, Outcome, Plugin};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

/// Load every `.wasm` in `dir` (the store's seeds), with its bytes.
fn load_seeds(host: &Host, dir: &Path, file: &str) -> Result<Vec<(Plugin, Vec<u8>)>, StartError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StartError::Config {
        file: file.into(),
        key: "plugins.dir".into(),
        problem: format!(
            "cannot read {}: {e}; build the plugins (cargo xtask plugins) or fix the path",
            dir.display()
        ),
    })?;
    let mut seeds: Vec<(Plugin, Vec<u8>)> = Vec::new();
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
    {
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                host.load(&bytes)
                    .map(|p| (p, bytes))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok((p, bytes)) => {
                let id = p.info().id();
                if let Some((other, _)) = seeds.iter().find(|(o, _)| o.info().id() == id)
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
                seeds.push((p, bytes));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping a file that is not a usable plugin")
            }
        }
    }
    Ok(seeds)
}

/// Everything `run` needs, built and checked at start-up.
pub struct Prepared {
    config: Config,
    file: String,
    lifecycle: Arc<Lifecycle>,
}

/// Open the plugin store and the control topic, and build every cohort at its pin: resolve
/// the plugin to its sha256, check its config, and get its schema id from the registry.
pub async fn prepare(
    config: Config,
    file: &str,
    limits: Limits,
    cache: Option<&Path>,
) -> Result<Prepared, StartError> {
    for (i, c) in config.cohorts.iter().enumerate() {
        if let Some(mib) = c.plugin_memory_mib
            && mib << 20 > limits.memory_bytes
        {
            return Err(StartError::Config {
                file: file.into(),
                key: format!("cohort[{i}].plugin_memory_mib"),
                problem: format!(
                    "{mib} MiB is more than the host's cap of {} MiB: raise --plugin-memory-mib (WEIR_PLUGIN_MEMORY_MIB) or lower this",
                    limits.memory_bytes >> 20
                ),
            });
        }
    }
    let host = Host::new(limits, cache).map_err(|e| StartError::Other(e.to_string()))?;
    let seeds = load_seeds(&host, &config.plugins.dir, file)?;
    crate::capture::probe(&config.kafka)
        .await
        .map_err(|problem| StartError::Config {
            file: file.into(),
            key: "kafka".into(),
            problem,
        })?;
    let store = Store::open(&config.plugins.store).map_err(|e| StartError::Config {
        file: file.into(),
        key: "plugins.store".into(),
        problem: e.to_string(),
    })?;
    let control = Control::open(&config.kafka, &config.plugins.control_topic, store.clone())
        .await
        .map_err(|e| StartError::Config {
            file: file.into(),
            key: "plugins.control_topic".into(),
            problem: e.to_string(),
        })?;
    let lifecycle = Lifecycle::start(config.clone(), Arc::new(host), store, control, seeds)
        .await
        .map_err(|e| match e {
            LifecycleError::NotFound(problem) | LifecycleError::Invalid(problem) => {
                let (key, problem) = problem
                    .split_once(": ")
                    .map(|(k, p)| (k.to_owned(), p.to_owned()))
                    .filter(|(k, _)| k.starts_with("cohort["))
                    .unwrap_or(("plugins".into(), problem));
                StartError::Config {
                    file: file.into(),
                    key,
                    problem,
                }
            }
            other => StartError::Other(other.to_string()),
        })?;
    Ok(Prepared {
        config,
        file: file.to_owned(),
        lifecycle,
    })
}

/// How `run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Every message taken in was written and acknowledged.
    Drained,
    /// `shutdown_timeout_s` passed with messages still unacknowledged; the broker keeps
    /// them and redelivers them to the next session.
    TimedOut {
        /// Messages left unacknowledged.
        left: u32,
    },
    /// A second signal: stopped at once.
    Interrupted {
        /// Messages left unacknowledged.
        left: u32,
    },
}

/// Take the next batch: wait for the first message, then take more until `size` or `wait`.
async fn next_batch(
    rx: &mut mpsc::Receiver<Incoming>,
    size: usize,
    wait: Duration,
) -> Option<Vec<Incoming>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(size);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < size {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => batch.push(m),
                _ => break,
            },
        }
    }
    Some(batch)
}

/// Run until the first message on `signals`; then stop reading, finish what is in flight
/// for at most `output.shutdown_timeout_s` (a second signal stops at once), disconnect.
pub async fn run(
    p: Prepared,
    mut signals: mpsc::UnboundedReceiver<()>,
) -> Result<Stopped, StartError> {
    let metrics = Arc::new(Metrics::new());
    let cfg = &p.config;
    let admin = admin::bind(&cfg.admin.listen)
        .await
        .map_err(StartError::Other)?;
    let _admin = admin::spawn(
        admin,
        cfg.admin.tls.as_ref(),
        metrics.clone(),
        Some(p.lifecycle.clone()),
        cfg.admin.tokens(),
    )
    .map_err(StartError::Other)?;
    let sink = Sink::new(&cfg.kafka).map_err(|e| StartError::Config {
        file: p.file.clone(),
        key: "kafka".into(),
        problem: e.to_string(),
    })?;
    let mut topics = vec![(
        cfg.output.quarantine_topic.clone(),
        "output.quarantine_topic".to_owned(),
    )];
    if let Some(raw) = &cfg.output.raw_topic {
        topics.push((raw.clone(), "output.raw_topic".into()));
    }
    for (i, c) in cfg.cohorts.iter().enumerate() {
        topics.push((c.output_topic.clone(), format!("cohort[{i}].output_topic")));
    }
    sink.check_topics(&topics)
        .await
        .map_err(|e| StartError::Other(format!("{}: {e}", p.file)))?;
    let _kafka_probe = AbortOnDrop(sink.watch(metrics.clone()));
    let (source, rx) =
        Source::start(&cfg.mqtt, metrics.clone()).map_err(|e| StartError::Other(e.to_string()))?;

    // Delivery, on its own task so that transforming one batch overlaps writing the one
    // before: each message's writes driven to their end, PUBACKs in arrival order.
    let (work_tx, work_rx) = mpsc::channel::<Work>(4);
    let courier = {
        let courier = Courier::new(sink.clone(), source.clone(), metrics.clone());
        AbortOnDrop(tokio::spawn(deliver(
            courier,
            sink.clone(),
            metrics.clone(),
            work_rx,
        )))
    };

    // The batcher owns the source's channel, so a batch is never half taken when the
    // pipeline stops to do something else.
    let (batch_tx, mut batches) = mpsc::channel::<Vec<Incoming>>(1);
    let batcher = {
        let (size, wait) = (
            cfg.output.batch_size,
            Duration::from_millis(cfg.output.batch_wait_ms),
        );
        let mut rx = rx;
        AbortOnDrop(tokio::spawn(async move {
            while let Some(b) = next_batch(&mut rx, size, wait).await {
                if batch_tx.send(b).await.is_err() {
                    break;
                }
            }
        }))
    };
    let _progress = {
        let (source, metrics) = (source.clone(), metrics.clone());
        AbortOnDrop(tokio::spawn(async move {
            let mut report = tokio::time::interval(Duration::from_secs(10));
            report.tick().await;
            loop {
                report.tick().await;
                tracing::info!(
                    received = metrics.received.get(),
                    acked = metrics.acked.get(),
                    in_flight = source.in_flight(),
                    "progress"
                );
            }
        }))
    };
    let mut live_rx = p.lifecycle.live();
    let (switched_tx, switched_rx) = mpsc::unbounded_channel::<Switched>();
    let _follower = AbortOnDrop(tokio::spawn(p.lifecycle.clone().follow(switched_rx)));
    // The version each cohort's last message went through, to report cutovers.
    let mut seen: Vec<String> = live_rx
        .borrow()
        .versions
        .iter()
        .map(|v| v.sha256.clone())
        .collect();
    // Message ids: this run's random prefix and the arrival sequence; unique across runs
    // and processes without coordination.
    let run_id = format!("{:016x}", rand::random::<u64>());
    let mut next_id = 0u64;
    let mut failure = None;
    loop {
        let batch = tokio::select! {
            biased;
            why = source.failed() => {
                failure = Some(why);
                break;
            }
            _ = signals.recv() => break,
            b = batches.recv() => b,
        };
        let Some(batch) = batch else {
            // The source's channel closed: it stopped, and a failure says why.
            if let Ok(why) = tokio::time::timeout(Duration::from_secs(1), source.failed()).await {
                failure = Some(why);
            }
            break;
        };
        // One live set for the whole batch: a swap lands between batches.
        let live = live_rx.borrow_and_update().clone();
        let topology = live.topology.clone();
        let mut inputs = Vec::with_capacity(batch.len());
        let mut tokens = Vec::with_capacity(batch.len());
        for inc in batch {
            tokens.push(inc.ack);
            inputs.push(Input {
                id: format!("{run_id}-{next_id:x}"),
                message: inc.message,
                retained: inc.retain,
                oversize: inc.oversize,
            });
            next_id += 1;
        }
        let routes: Vec<Option<usize>> =
            inputs.iter().map(|i| topology.route(&i.message)).collect();
        for (ci, version) in live.versions.iter().enumerate() {
            if seen[ci] == version.sha256 {
                continue;
            }
            if let Some(first) = routes.iter().position(|r| *r == Some(ci)) {
                seen[ci] = version.sha256.clone();
                let _ = switched_tx.send(Switched {
                    cohort: ci,
                    version: version.clone(),
                    first_topic: inputs[first].message.topic.clone(),
                });
            }
        }
        let outcomes = transform(&topology, &live.plugins, &metrics, &mut inputs, &routes);
        for tap in p.lifecycle.taps() {
            for ((input, route), outcome) in inputs.iter().zip(&routes).zip(&outcomes) {
                if let (Some(ci), Some(o)) = (route, outcome)
                    && *ci == tap.cohort
                {
                    tap.offer(&input.message, o);
                }
            }
        }
        let work = Work {
            topology,
            messages: tokens
                .into_iter()
                .zip(inputs)
                .zip(routes)
                .zip(outcomes)
                .map(|(((t, i), r), o)| (t, i, r, o))
                .collect(),
        };
        // Handing over waits while the courier is behind (Kafka slow or away); a signal
        // must still stop it (what was not handed over stays unacknowledged with the
        // broker).
        tokio::select! {
            r = work_tx.send(work) => if r.is_err() { break },
            _ = signals.recv() => break,
        }
    }
    if let Some(why) = failure {
        return Err(StartError::Other(why));
    }

    // Stop reading: what the source has handed on but the pipeline has not taken goes back
    // to the broker (it is redelivered to the next session).
    drop(batcher);
    drop(batches);
    drop(work_tx);
    let timeout = Duration::from_secs(cfg.output.shutdown_timeout_s);
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        in_flight = source.in_flight(),
        timeout_s = timeout.as_secs(),
        "stopping: finishing in-flight messages"
    );
    // The courier finishes every message handed over, then ends; then the source has
    // written the last PUBACKs.
    let mut courier = courier;
    let stopped = tokio::select! {
        r = tokio::time::timeout_at(deadline, async {
            let _ = (&mut courier.0).await;
            source.drained().await;
        }) => match r {
            Ok(()) => Stopped::Drained,
            Err(_) => Stopped::TimedOut { left: source.in_flight() },
        },
        _ = signals.recv() => Stopped::Interrupted { left: source.in_flight() },
    };
    // An unfinished courier is stopped: what it held stays unacknowledged.
    drop(courier);
    if stopped == Stopped::Drained {
        sink.flush(Duration::from_secs(5));
        source.disconnect().await;
    } else {
        // Write the acks already released, then leave; the rest stays with the broker.
        let grace = if matches!(stopped, Stopped::Interrupted { .. }) {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let _ = tokio::time::timeout(grace, source.disconnect()).await;
    }
    Ok(stopped)
}

/// A transformed batch handed to the courier: per message its ack, the message, its
/// cohort and its transform outcome, planned against `topology`.
struct Work {
    topology: Arc<Topology>,
    messages: Vec<(AckToken, Input, Option<usize>, Option<Outcome>)>,
}

/// The courier's task: plan and start each message handed over, feed Kafka's answers
/// back, send retries when due; when the pipeline stops handing over, finish what was
/// started and end.
async fn deliver(
    mut courier: Courier,
    sink: Sink,
    metrics: Arc<Metrics>,
    mut work: mpsc::Receiver<Work>,
) {
    let mut answers = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut open = true;
    while open || courier.in_progress() > 0 {
        let retry = courier.next_retry();
        tokio::select! {
            () = sink.answers(&mut answers) => courier.answered(&mut answers).await,
            () = sleep_until(retry) => courier.retry_due().await,
            _ = tick.tick() => {
                let age = courier.oldest().map_or(0.0, |t| t.elapsed().as_secs_f64());
                metrics.oldest_unacked_seconds.set(age);
            }
            w = work.recv(), if open => match w {
                Some(w) => {
                    for (token, input, cohort, outcome) in w.messages {
                        Metrics::observe(&metrics.handover_seconds, token.arrived().elapsed());
                        let seq = courier.arrived(token);
                        let d = w.topology.plan(input, cohort, outcome);
                        courier.start(seq, d, w.topology.clone()).await;
                    }
                    courier.release();
                }
                None => open = false,
            },
        }
    }
}

/// Sleep until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Run each cohort's plugin over its share of the batch; `None` for messages that are not
/// transformed (unrouted, oversize).
fn transform(
    topology: &Topology,
    plugins: &[Arc<Configured>],
    metrics: &Metrics,
    inputs: &mut [Input],
    routes: &[Option<usize>],
) -> Vec<Option<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
    for (ci, plugin) in plugins.iter().enumerate() {
        let idx: Vec<usize> = (0..inputs.len())
            .filter(|&i| routes[i] == Some(ci) && inputs[i].oversize.is_none())
            .collect();
        if idx.is_empty() {
            continue;
        }
        let mut group: Vec<Message> = idx
            .iter()
            .map(|&i| std::mem::take(&mut inputs[i].message))
            .collect();
        let started = Instant::now();
        let results = tokio::task::block_in_place(|| plugin.process(&mut group));
        Metrics::observe(
            &metrics.transform_seconds.get_or_create(&CohortLabel {
                cohort: topology.cohorts[ci].name.clone(),
            }),
            started.elapsed(),
        );
        for ((i, o), m) in idx.into_iter().zip(results).zip(group) {
            outcomes[i] = Some(o);
            inputs[i].message = m;
        }
    }
    outcomes
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
