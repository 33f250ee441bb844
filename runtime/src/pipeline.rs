//! `weir run`: wires the stages — source → route → transform → encode → sink → ack.
//!
//! - The **batcher** takes messages from the source (in chunks, a socket read's worth) until
//!   a batch is full or its wait ran out, and holds it back as long as the group's rate
//!   limit says ([`Pace`]).
//! - The **pipeline task** routes the batch, runs each cohort's plugin on its share, and
//!   hands the batch over in arrival order to
//! - the **courier task** ([`crate::deliver`]), which asks the planning core
//!   ([`weir_core::plan`]) for each message's writes, enqueues them, takes Kafka's answers in
//!   bulk and feeds them back to the core (acknowledge, write again, or quarantine
//!   instead), and releases acknowledgements in arrival order (the watermark in
//!   [`weir_core::ack`]) to the source, which writes the PUBACKs. No future or task per
//!   message; transforming one batch overlaps writing the one before.
//!
//! Memory is bounded by `mqtt.max_in_flight`: the source takes an in-flight permit before
//! it hands a message on and releases it when the PUBACK is written. When Kafka stalls, the
//! source stops reading and the broker keeps the backlog in the session.

use crate::admin;
use crate::config::{Config, GroupPlan};
use crate::control::{Control, ControlError};
use crate::deliver::{Courier, Work};
use crate::lifecycle::{Lifecycle, LifecycleError, Live, Switched};
use crate::metrics::{CohortLabel, GroupMetrics, Metrics};
use crate::sink::Sink;
use crate::source::slots::Membership;
use crate::source::{AckToken, Chunk, Incoming, Source, Transactional};
use crate::store::Store;
use crate::transactions::{Released, Transactions};
use crate::transform::{Host, Limits, Message, Outcome, Plugin};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use weir_core::plan::Input;

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
    /// The admin server cannot start.
    #[error(transparent)]
    Admin(#[from] admin::ServeError),
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
    tokens: admin::Tokens,
}

/// Open the plugin store and the control topic, and build every cohort at its pin: resolve
/// the plugin to its sha256, check its config, and get its schema id from the registry.
pub async fn prepare(
    config: Config,
    file: &str,
    limits: Limits,
    cache: Option<&Path>,
) -> Result<Prepared, StartError> {
    let tokens =
        admin::Tokens::new(&config.admin).map_err(|(key, problem)| StartError::Config {
            file: file.into(),
            key: key.into(),
            problem,
        })?;
    check_cohort_limits(&config, &limits, file)?;
    let host = Host::new(limits, cache).map_err(|e| StartError::Other(e.to_string()))?;
    let seeds = load_seeds(&host, &config.plugins.dir, file)?;
    crate::capture::probe(&config.kafka)
        .await
        .map_err(|problem| StartError::Config {
            file: file.into(),
            key: "kafka".into(),
            problem: problem.to_string(),
        })?;
    let store = Store::open(&config.plugins.store).map_err(|e| StartError::Config {
        file: file.into(),
        key: "plugins.store".into(),
        problem: e.to_string(),
    })?;
    let control = Control::for_config(&config, store.clone())
        .await
        .map_err(|e| control_error(e, file))?;
    let lifecycle = Lifecycle::start(
        config.clone(),
        Arc::new(host),
        store,
        Arc::new(control),
        seeds,
    )
    .await
    .map_err(|e| lifecycle_error(e, file))?;
    Ok(Prepared {
        config,
        file: file.to_owned(),
        lifecycle,
        tokens,
    })
}

/// Every cohort's own limits within the host's: a cohort cannot be given more memory or
/// output than the sandbox allows.
fn check_cohort_limits(config: &Config, limits: &Limits, file: &str) -> Result<(), StartError> {
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
        if let Some(kib) = c.plugin_output_kib
            && kib << 10 > limits.max_output_bytes_per_message
        {
            return Err(StartError::Config {
                file: file.into(),
                key: format!("cohort[{i}].plugin_output_kib"),
                problem: format!(
                    "{kib} KiB is more than the host's bound of {} KiB: raise --plugin-output-kib (WEIR_PLUGIN_OUTPUT_KIB) or lower this",
                    limits.max_output_bytes_per_message >> 10
                ),
            });
        }
    }
    Ok(())
}

/// A control-topic error at start-up, named by the config key to fix.
fn control_error(e: ControlError, file: &str) -> StartError {
    match e {
        ControlError::Keys { key, problem } => StartError::Config {
            file: file.into(),
            key,
            problem,
        },
        e @ ControlError::Kafka { .. } => StartError::Config {
            file: file.into(),
            key: "plugins.control_topic".into(),
            problem: e.to_string(),
        },
    }
}

/// A lifecycle error at start-up: a missing or invalid version is the config's (its key
/// leads the message), the rest is not.
fn lifecycle_error(e: LifecycleError, file: &str) -> StartError {
    match e {
        LifecycleError::Config { key, problem } => StartError::Config {
            file: file.into(),
            key,
            problem,
        },
        LifecycleError::NotFound(problem) | LifecycleError::Invalid(problem) => {
            StartError::Config {
                file: file.into(),
                key: "plugins".into(),
                problem,
            }
        }
        other => StartError::Other(other.to_string()),
    }
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
    /// Kafka could not be written to and nothing was acknowledged for
    /// [`NO_PROGRESS_STOP`]: stopped without waiting out the shutdown timeout.
    KafkaAway {
        /// Messages left unacknowledged.
        left: u32,
        /// What the Kafka probe says.
        why: String,
    },
}

/// How long a shutdown waits with Kafka unwritable and no acknowledgement before it stops:
/// a drain that cannot complete should not hold weir until its supervisor kills it.
pub const NO_PROGRESS_STOP: Duration = Duration::from_secs(2);

/// Ends when Kafka has been unwritable (its probe reports a problem) and no message was
/// acknowledged for [`NO_PROGRESS_STOP`]; returns the probe's problem.
async fn no_write_can_complete(metrics: &Metrics) -> String {
    const LOOK: Duration = Duration::from_millis(250);
    let mut since: Option<(tokio::time::Instant, u64)> = None;
    loop {
        tokio::time::sleep(LOOK).await;
        let acked = metrics.acked.get();
        match (metrics.kafka_problem(), since) {
            (Some(why), Some((at, before))) if before == acked => {
                if at.elapsed() >= NO_PROGRESS_STOP {
                    return why;
                }
            }
            (Some(_), _) => since = Some((tokio::time::Instant::now(), acked)),
            (None, _) => since = None,
        }
    }
}

/// A group's rate limit (`max_messages_per_s`), kept by spacing batches: a batch of `n`
/// may go no sooner than `n / rate` after the one before. Over any stretch the group takes
/// at most its rate, plus one batch; what it does not take waits at the broker in its own
/// session (the source's receive maximum stops the flow), so the CPU, broker delivery and
/// Kafka capacity a storm takes from the other groups is bounded by the limit. An idle
/// group starts at once.
#[derive(Debug)]
struct Pace {
    per_message: Duration,
    /// When the next batch may go.
    next: Option<tokio::time::Instant>,
}

impl Pace {
    fn new(per_second: u32) -> Pace {
        Pace {
            per_message: Duration::from_secs(1) / per_second.max(1),
            next: None,
        }
    }

    /// When a batch of `n` taken at `now` may go; books its share of the rate.
    fn admit(&mut self, now: tokio::time::Instant, n: usize) -> tokio::time::Instant {
        let at = self.next.map_or(now, |next| next.max(now));
        self.next = Some(at + self.per_message * u32::try_from(n).unwrap_or(u32::MAX));
        at
    }
}

/// Take the next batch: wait for the first message, then take more until `size` or `wait`.
/// Messages come in chunks (a socket read's worth); what does not fit is `left` for the
/// next batches.
async fn next_batch<T>(
    rx: &mut mpsc::Receiver<Vec<T>>,
    left: &mut VecDeque<T>,
    size: usize,
    wait: Duration,
) -> Option<Vec<T>> {
    let mut batch = if left.is_empty() {
        rx.recv().await?
    } else {
        left.drain(..left.len().min(size)).collect()
    };
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < size {
        let mut chunk = match rx.try_recv() {
            Ok(c) => c,
            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => c,
                _ => break,
            },
        };
        batch.reserve(size.saturating_sub(batch.len()).max(chunk.len()));
        batch.append(&mut chunk);
    }
    if batch.len() > size {
        left.extend(batch.drain(size..));
    }
    Some(batch)
}

/// Run until the first message on `signals`; then stop reading, finish what is in flight
/// for at most `output.shutdown_timeout_s` (a second signal stops at once), disconnect.
///
/// Each isolation group runs as its own lane (see [`Lane`]); they share the admin
/// listener, the plugin lifecycle and the control topic.
pub async fn run(
    p: Prepared,
    mut signals: mpsc::UnboundedReceiver<()>,
) -> Result<Stopped, StartError> {
    let metrics = Arc::new(Metrics::with_control_rejected(
        p.lifecycle.control_rejected(),
    ));
    p.lifecycle
        .count_capacity_waits_in(metrics.plugin_instance_waits.clone());
    let cfg = &p.config;
    let admin = admin::bind(&cfg.admin.listen).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<Option<String>>();
    let (panic_tx, mut panics) = mpsc::unbounded_channel::<String>();
    let serving = admin::spawn(
        admin,
        cfg.admin.tls.as_ref(),
        metrics.clone(),
        Some(p.lifecycle.clone()),
        p.tokens,
    )?;
    // The admin listener and the lifecycle's follower are watched like the lanes' tasks: a
    // panic in either stops weir with its reason, and so does a listener that stops
    // accepting (it never ends by itself).
    let _admin = supervised("the admin listener".into(), panic_tx.clone(), async move {
        match serving.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => panic!("it stopped accepting connections"),
        }
    });
    let topics = written_topics(cfg);
    let (switched_tx, switched_rx) = mpsc::unbounded_channel::<Switched>();
    let _follower = supervised(
        "the plugin lifecycle's follower".into(),
        panic_tx.clone(),
        p.lifecycle.clone().follow(switched_rx),
    );
    let plans = cfg.group_plans();
    // Every group counts towards readiness from the start, not from when its lane starts:
    // weir is not ready while a group is still being set up.
    for plan in &plans {
        metrics.group(&plan.name);
    }
    let mut lanes = Vec::new();
    for plan in plans {
        let channels = (stop_rx.clone(), ended_tx.clone(), panic_tx.clone());
        let lane = start_lane(
            (cfg, &p.file, &p.lifecycle),
            plan,
            &metrics,
            &topics,
            (switched_tx.clone(), channels),
        );
        lanes.push(lane.await?);
    }
    drop((switched_tx, ended_tx, panic_tx));
    let written: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    // Every group's producer is probed: readiness is all of them, and one that fails
    // fatally stops weir (its writes could never complete).
    let mut probes: Vec<AbortOnDrop<String>> = lanes
        .iter()
        .map(|l| AbortOnDrop(l.sink.watch(metrics.clone(), written.clone())))
        .collect();
    let _progress = report_progress(metrics.clone());

    // Run until a signal, or until a lane ends (its session failed or closed).
    let failure = tokio::select! {
        _ = signals.recv() => None,
        Some(why) = ended.recv() => why,
        Some(why) = panics.recv() => Some(why),
        why = fatal(&mut probes) => Some(why),
    };
    stop_tx.send_replace(true);
    for lane in &mut lanes {
        let _ = (&mut lane.task.0).await;
    }
    if let Some(why) = failure {
        return Err(StartError::Other(why));
    }

    finish(&mut lanes, cfg, &mut signals, &metrics, &mut panics).await
}

/// The topics weir writes to, each with the config key that names it.
fn written_topics(cfg: &Config) -> Vec<(String, String)> {
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

    topics
}

/// What a lane is told (stop) and tells (its end, a task's panic).
type LaneChannels = (
    watch::Receiver<bool>,
    mpsc::UnboundedSender<Option<String>>,
    mpsc::UnboundedSender<String>,
);

/// Start one isolation group's lane: its producer (on the group's threads, which give
/// librdkafka's threads the group's CPU priority), the topics checked, its session, and
/// with slots its membership.
async fn start_lane(
    (cfg, file, lifecycle): (&Config, &str, &Arc<Lifecycle>),
    plan: GroupPlan,
    metrics: &Arc<Metrics>,
    topics: &[(String, String)],
    (switched, channels): (mpsc::UnboundedSender<Switched>, LaneChannels),
) -> Result<Lane, StartError> {
    let runtime = lane_runtime(&plan.name, plan.nice)?;
    // One producer per group, so that a group's writes never queue behind another's,
    // made on one of the group's threads: librdkafka's threads take their creator's
    // CPU priority.
    let kafka = cfg.kafka.clone();
    let name = format!("group {:?}", plan.name);
    let group_sink = runtime
        .get()
        .spawn_blocking(move || Sink::new(&kafka, &name))
        .await
        .map_err(|e| {
            StartError::Other(format!(
                "creating group {:?}'s Kafka producer failed: {e}",
                plan.name
            ))
        })?
        .map_err(|e| StartError::Config {
            file: file.to_owned(),
            key: "kafka".into(),
            problem: e.to_string(),
        })?;
    group_sink.count_throttling(metrics.kafka_throttled_seconds.clone());
    group_sink.count_answer_times(metrics.kafka_answer_seconds.clone());
    // Every topic weir writes to exists (the first group's check stops start-up before
    // any session connects), and the producer is connected (and, idempotent, has its
    // producer id) before its session brings the first messages.
    group_sink
        .check_topics(topics)
        .await
        .map_err(|e| StartError::Other(format!("{}: {e}", file)))?;
    // Exactly once: the sessions' state topic exists before any session opens.
    let transactions = if plan.mqtt.exactly_once {
        Some(
            Transactions::new(&cfg.kafka, &plan.mqtt.client_id, plan.mqtt.slots)
                .await
                .map_err(|e| StartError::Other(format!("{file}: exactly once: {e}")))?,
        )
    } else {
        None
    };
    let slotted = plan.mqtt.slots.is_some().then(|| plan.mqtt.clone());
    let mut lane = Lane::start(
        plan,
        runtime,
        cfg,
        (group_sink, transactions),
        metrics.clone(),
        lifecycle,
        switched,
        channels,
    )?;
    if let Some(mqtt) = slotted {
        lane.join_slots(cfg, &mqtt, metrics)
            .await
            .map_err(|e| StartError::Other(format!("{}: {e}", file)))?;
    }
    Ok(lane)
}

/// A progress line every 10 s, for as long as the handle lives.
fn report_progress(metrics: Arc<Metrics>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut report = tokio::time::interval(Duration::from_secs(10));
        report.tick().await;
        loop {
            report.tick().await;
            tracing::info!(
                received = metrics.received.get(),
                acked = metrics.acked.get(),
                in_flight = metrics.in_flight.get(),
                "progress"
            );
        }
    }))
}

/// After a signal: stop reading, let each courier finish what it was handed (until the
/// drain timeout, a second signal, or Kafka being unable to take any write), disconnect,
/// and leave the slots groups.
async fn finish(
    lanes: &mut [Lane],
    cfg: &Config,
    signals: &mut mpsc::UnboundedReceiver<()>,
    metrics: &Arc<Metrics>,
    panics: &mut mpsc::UnboundedReceiver<String>,
) -> Result<Stopped, StartError> {
    let in_flight = |lanes: &[Lane]| lanes.iter().map(|l| l.source.in_flight()).sum::<u32>();
    // Stop reading: what the sources have handed on but the lanes have not taken goes
    // back to the broker (it is redelivered to the next session).
    for lane in lanes.iter_mut() {
        lane.batcher.take();
    }
    let timeout = Duration::from_secs(cfg.output.shutdown_timeout_s);
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        in_flight = in_flight(lanes),
        timeout_s = timeout.as_secs(),
        "stopping: finishing in-flight messages"
    );
    // Each courier finishes every message handed over, then ends; then its source has
    // written the last PUBACKs.
    let finished = futures::future::join_all(lanes.iter_mut().map(|l| async {
        if let Some(c) = &mut l.courier {
            let _ = (&mut c.0).await;
        }
        l.source.drained().await;
    }));
    let stopped = tokio::select! {
        r = tokio::time::timeout_at(deadline, finished) => match r {
            Ok(_) => Stopped::Drained,
            Err(_) => Stopped::TimedOut { left: in_flight(lanes) },
        },
        _ = signals.recv() => Stopped::Interrupted { left: in_flight(lanes) },
        why = no_write_can_complete(metrics) => Stopped::KafkaAway { left: in_flight(lanes), why },
    };
    // An unfinished courier is stopped: what it held stays unacknowledged.
    for lane in lanes.iter_mut() {
        lane.courier.take();
    }
    if let Ok(why) = panics.try_recv() {
        return Err(StartError::Other(why));
    }
    if stopped == Stopped::Drained {
        for lane in lanes.iter() {
            lane.sink.flush(Duration::from_secs(5));
        }
        futures::future::join_all(lanes.iter().map(|l| l.source.disconnect())).await;
    } else {
        // Write the acks already released, then leave; the rest stays with the broker.
        let grace = if matches!(stopped, Stopped::Interrupted { .. }) {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let _ = tokio::time::timeout(
            grace,
            futures::future::join_all(lanes.iter().map(|l| l.source.disconnect())),
        )
        .await;
    }
    // Leave the slots groups: the other processes take the slots now, not after the
    // session timeout.
    futures::future::join_all(
        lanes
            .iter_mut()
            .filter_map(|l| l.membership.take())
            .map(|m| m.leave(Duration::from_secs(5))),
    )
    .await;
    Ok(stopped)
}

/// One isolation group at work: its own MQTT session ([`Source`]), batcher, transform
/// worker thread, Kafka producer and courier, on threads of its own. Nothing in one lane
/// waits on another's: a plugin spinning to its deadline holds only its own lane's worker,
/// a flood fills only its own lane's in-flight budget, and the operating system, not a
/// shared task queue, shares the CPU between lanes (by their `nice`), while PUBACKs on the
/// other sessions go on leaving.
struct Lane {
    /// The group's I/O threads: its session, batcher, pipeline task and courier run here.
    runtime: LaneRuntime,
    /// The group's name.
    name: String,
    source: Source,
    sink: Sink,
    courier: Option<AbortOnDrop>,
    batcher: Option<AbortOnDrop>,
    /// With scale-out slots: until the lane joins the slots group, what confirms its hold
    /// ([`Lane::join_slots`]); then its membership.
    lease: Option<watch::Sender<Option<std::time::Instant>>>,
    membership: Option<Membership>,
    /// Routes, transforms and hands over batches; when it ends it says so, with the
    /// session's failure if there was one.
    task: AbortOnDrop,
}

impl Lane {
    /// Join the slots group of the lane's deployment: its sessions are the slots Kafka
    /// assigns this process.
    async fn join_slots(
        &mut self,
        cfg: &Config,
        mqtt: &crate::config::Mqtt,
        metrics: &Metrics,
    ) -> Result<(), crate::source::slots::SlotsError> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        let group = metrics.group(&self.name);
        let membership = Membership::join(
            &cfg.kafka,
            mqtt,
            &cfg.process_name(),
            self.source.clone(),
            lease,
            Duration::from_secs(cfg.output.shutdown_timeout_s),
            group,
            self.runtime.get().handle().clone(),
        )
        .await?;
        self.membership = Some(membership);
        Ok(())
    }

    /// The group's MQTT source: one session, or the slots Kafka's group gives this process
    /// (then with the sender that confirms their lease).
    #[allow(clippy::type_complexity)]
    fn open_source(
        mqtt: &crate::config::Mqtt,
        metrics: &Arc<Metrics>,
        group: &GroupMetrics,
        transactions: Option<Arc<dyn Transactional>>,
    ) -> Result<
        (
            Option<watch::Sender<Option<std::time::Instant>>>,
            Source,
            mpsc::Receiver<Chunk>,
        ),
        StartError,
    > {
        let (lease, started) = if mqtt.slots.is_some() {
            let (lease, confirmed) = watch::channel(None);
            let started = Source::for_slots(
                mqtt,
                metrics.clone(),
                group.clone(),
                confirmed,
                transactions,
            );
            (Some(lease), started)
        } else {
            let started = Source::start(mqtt, metrics.clone(), group.clone(), transactions);
            (None, started)
        };
        let (source, rx) = started.map_err(|e| StartError::Other(e.to_string()))?;
        Ok((lease, source, rx))
    }

    /// The group's batcher, which owns the source's channel (so a batch is never half
    /// taken when the lane stops to do something else), and the batches it makes.
    fn start_batcher(
        cfg: &Config,
        plan: &GroupPlan,
        rx: mpsc::Receiver<Chunk>,
        throttled: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
        panics: mpsc::UnboundedSender<String>,
    ) -> (AbortOnDrop, mpsc::Receiver<Vec<Incoming>>) {
        let (batch_tx, batches) = mpsc::channel::<Vec<Incoming>>(1);
        // A batch never holds more than the group's in-flight budget.
        let (size, wait) = (
            cfg.output
                .batch_size
                .min(usize::from(plan.mqtt.max_in_flight)),
            Duration::from_millis(cfg.output.batch_wait_ms),
        );
        let pace = plan.mqtt.max_messages_per_s.map(Pace::new);
        let batcher = supervised(
            format!("group {:?}'s batcher", plan.name),
            panics,
            batch(rx, batch_tx, (size, wait), pace, throttled),
        );
        (batcher, batches)
    }

    /// Start the group's tasks on `runtime` (its own) and its transform worker.
    #[allow(clippy::too_many_arguments)]
    fn start(
        plan: GroupPlan,
        runtime: LaneRuntime,
        cfg: &Config,
        (sink, transactions): (
            Sink,
            Option<(Transactions, mpsc::UnboundedReceiver<Released>)>,
        ),
        metrics: Arc<Metrics>,
        lifecycle: &Arc<Lifecycle>,
        switched: mpsc::UnboundedSender<Switched>,
        (stop, ended, panics): (
            watch::Receiver<bool>,
            mpsc::UnboundedSender<Option<String>>,
            mpsc::UnboundedSender<String>,
        ),
    ) -> Result<Lane, StartError> {
        let inside = runtime.get().enter();
        let name_of_lane = plan.name.clone();
        let group = metrics.group(&plan.name);
        let throttled = group.throttled_seconds.clone();
        let side = transactions
            .as_ref()
            .map(|(t, _)| Arc::new(t.clone()) as Arc<dyn Transactional>);
        let (lease, source, rx) = Self::open_source(&plan.mqtt, &metrics, &group, side)?;
        let worker = Worker::start(&plan.name, runtime.nice).map_err(StartError::Other)?;

        // Delivery, on its own task so that transforming one batch overlaps writing the
        // one before: each message's writes driven to their end, PUBACKs in arrival order.
        // Exactly once, a batch is a transaction per session instead; the batches
        // transformed while one commits wait (bounded by the in-flight budget) and go in
        // the next transaction together, so a commit's round trip is paid once for many.
        let depth = if transactions.is_some() { 64 } else { 4 };
        let (work_tx, work_rx) = mpsc::channel::<Work>(depth);
        let courier = match transactions {
            Some((t, released)) => supervised(
                format!("group {:?}'s transactions", plan.name),
                panics.clone(),
                t.deliver(source.clone(), metrics.clone(), work_rx, released),
            ),
            None => {
                let courier = Courier::new(sink.clone(), source.clone(), metrics.clone());
                supervised(
                    format!("group {:?}'s courier", plan.name),
                    panics.clone(),
                    deliver(courier, sink.clone(), metrics.clone(), group, work_rx),
                )
            }
        };

        let (batcher, batches) = Self::start_batcher(cfg, &plan, rx, throttled, panics.clone());
        let work = LaneWork {
            cohorts: plan.cohorts,
            source: source.clone(),
            metrics,
            lifecycle: lifecycle.clone(),
            switched,
            worker,
        };
        let group_name = plan.name.clone();
        let task = supervised(
            format!("group {group_name:?}'s pipeline"),
            panics,
            async move {
                let why = work.run(&group_name, batches, work_tx, stop).await;
                let _ = ended.send(why);
            },
        );
        drop(inside);
        Ok(Lane {
            runtime,
            name: name_of_lane,
            source,
            sink,
            courier: Some(courier),
            batcher: Some(batcher),
            lease,
            membership: None,
            task,
        })
    }
}

/// A lane's batcher: batches of at most `size` messages, each taken within `wait` of its
/// first, paced to the group's `max_messages_per_s` (time held back counted in
/// `throttled`). It owns the source's channel, so a batch is never half taken when the
/// lane stops to do something else.
async fn batch(
    mut rx: mpsc::Receiver<Chunk>,
    batch_tx: mpsc::Sender<Vec<Incoming>>,
    (size, wait): (usize, Duration),
    mut pace: Option<Pace>,
    throttled: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
) {
    let mut left = VecDeque::new();
    while let Some(b) = next_batch(&mut rx, &mut left, size, wait).await {
        if let Some(pace) = &mut pace {
            let now = tokio::time::Instant::now();
            let at = pace.admit(now, b.len());
            if at > now {
                tokio::time::sleep_until(at).await;
                throttled.inc_by((at - now).as_secs_f64());
            }
        }
        if batch_tx.send(b).await.is_err() {
            break;
        }
    }
}

/// A group's own runtime, and the nice value its threads run at (`None`: weir's). Dropped
/// from the main runtime, which must not block, it shuts down in the background: by then
/// the lane's tasks have ended, or are aborted with it.
struct LaneRuntime {
    rt: Option<tokio::runtime::Runtime>,
    nice: Option<i32>,
}

impl LaneRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("present until dropped")
    }
}

impl Drop for LaneRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Most I/O threads a group gets: its session's reader, batcher, pipeline task and courier
/// are four tasks, so more threads would sit idle.
const LANE_IO_THREADS: usize = 4;

/// How many I/O threads a group gets on a host with `cores`: half of them (at least one, at
/// most [`LANE_IO_THREADS`]). The other half is for what the I/O feeds: the group's
/// transform thread, librdkafka's threads, and often the broker. Where the I/O tasks have
/// a thread each, every hand-over between them is a wake-up on another core; on two cores,
/// one I/O thread rather than two took a quarter fewer context switches and system calls
/// per message in the drain benchmark, and its I/O work fell by about 9 % against the
/// transform thread's in the same runs.
fn lane_io_threads(cores: usize) -> usize {
    (cores / 2).clamp(1, LANE_IO_THREADS)
}

/// A group's own runtime: its I/O threads, named after it, at weir's priority lowered by
/// `increment` (the group's `nice`).
fn lane_runtime(group: &str, increment: u8) -> Result<LaneRuntime, StartError> {
    let nice = crate::priority::group_nice(increment);
    let threads = lane_io_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(threads)
        .thread_name(format!("weir-io-{group}"))
        .enable_all();
    if let Some(nice) = nice {
        // Every thread the runtime starts, I/O and blocking ones alike.
        b.on_thread_start(move || {
            crate::priority::set_nice(nice);
        });
    }
    b.build().map(|rt| LaneRuntime { rt: Some(rt), nice }).map_err(|e| {
        StartError::Other(format!(
            "cannot start group {group:?}'s threads: {e}; the host is out of threads or memory (check ulimit -u and the memory limit)"
        ))
    })
}

/// Message ids of one lane: a random prefix per lane and run, and the arrival sequence
/// (`<16 hex digits>-<hex sequence>`); unique across runs and processes without
/// coordination.
pub struct MessageIds {
    /// The prefix and its `-`.
    run: String,
    next: u64,
}

impl Default for MessageIds {
    fn default() -> Self {
        MessageIds {
            run: format!("{:016x}-", rand::random::<u64>()),
            next: 0,
        }
    }
}

impl MessageIds {
    /// The next message's id. (Written digit by digit: `format!` cost more than a
    /// thousand instructions per message.)
    pub fn assign(&mut self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next;
        self.next = n.wrapping_add(1);
        let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1);
        let mut id = String::with_capacity(self.run.len() + digits as usize);
        id.push_str(&self.run);
        for k in (0..digits).rev() {
            id.push(char::from(HEX[((n >> (4 * k)) & 0xf) as usize]));
        }
        id
    }

    /// A batch's inputs, each with its id, and their ack tokens in the same order.
    pub fn inputs(&mut self, batch: Vec<Incoming>) -> (Vec<Input>, Vec<AckToken>) {
        let mut inputs = Vec::with_capacity(batch.len());
        let mut tokens = Vec::with_capacity(batch.len());
        for inc in batch {
            tokens.push(inc.ack);
            inputs.push(Input {
                id: self.assign(),
                message: inc.message,
                retained: inc.retain,
                oversize: inc.oversize,
            });
        }
        (inputs, tokens)
    }
}

/// What a lane's task needs to route, transform and hand over its batches.
struct LaneWork {
    /// The group's cohorts (indexes into the config's), ascending.
    cohorts: Vec<usize>,
    source: Source,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    switched: mpsc::UnboundedSender<Switched>,
    worker: Worker,
}

impl LaneWork {
    /// Take batches until `stop`; returns the session's failure if it failed.
    async fn run(
        mut self,
        group: &str,
        mut batches: mpsc::Receiver<Vec<Incoming>>,
        work_tx: mpsc::Sender<Work>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<String> {
        let mut live_rx = self.lifecycle.live();
        // The version each cohort's last message went through, to report cutovers.
        let mut seen: Vec<String> = live_rx
            .borrow()
            .versions
            .iter()
            .map(|v| v.sha256.clone())
            .collect();
        let mut ids = MessageIds::default();
        loop {
            let batch = tokio::select! {
                biased;
                why = self.source.failed() => return Some(why),
                _ = stop.wait_for(|s| *s) => return None,
                b = batches.recv() => b,
            };
            let Some(batch) = batch else {
                // The source's channel closed: it stopped, and a failure says why.
                return tokio::time::timeout(Duration::from_secs(1), self.source.failed())
                    .await
                    .ok();
            };
            // One live set for the whole batch: a swap lands between batches.
            let live = live_rx.borrow_and_update().clone();
            let topology = live.topology.clone();
            let (inputs, tokens) = ids.inputs(batch);
            let routes: Vec<Option<usize>> = inputs
                .iter()
                .map(|i| topology.route_among(&i.message, &self.cohorts))
                .collect();
            self.report_switches(&live, &inputs, &routes, &mut seen);
            // The plugins run on the lane's own worker thread; a signal does not wait for
            // them (what was not handed over stays unacknowledged with the broker).
            let job = Job {
                live: live.clone(),
                metrics: self.metrics.clone(),
                inputs,
                routes,
            };
            let Done {
                inputs,
                routes,
                outcomes,
                ..
            } = tokio::select! {
                done = self.worker.run(job) => match done {
                    Ok(done) => done,
                    Err(why) => return Some(why),
                },
                _ = stop.wait_for(|s| *s) => return None,
            };
            self.offer_taps(&inputs, &routes, &outcomes);
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
            // Handing over waits while the courier is behind (Kafka slow or away); a
            // signal must still stop it.
            tokio::select! {
                r = work_tx.send(work) => if r.is_err() {
                    return Some(format!("group {group:?}'s courier ended while messages were still coming; what it held stays unacknowledged with the broker"));
                },
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    /// Report each cohort whose version changed since its last message, with the topic of
    /// its first message through the new one (the cutover record).
    fn report_switches(
        &self,
        live: &Live,
        inputs: &[Input],
        routes: &[Option<usize>],
        seen: &mut [String],
    ) {
        for (ci, version) in live.versions.iter().enumerate() {
            if seen[ci] == version.sha256 {
                continue;
            }
            if let Some(first) = routes.iter().position(|r| *r == Some(ci)) {
                seen[ci] = version.sha256.clone();
                let _ = self.switched.send(Switched {
                    cohort: ci,
                    version: version.clone(),
                    first_topic: inputs[first].message.topic.clone(),
                });
            }
        }
    }

    /// Offer each shadow tap the messages of its cohort and their live outcomes.
    fn offer_taps(&self, inputs: &[Input], routes: &[Option<usize>], outcomes: &[Option<Outcome>]) {
        for tap in self.lifecycle.taps() {
            for ((input, route), outcome) in inputs.iter().zip(routes).zip(outcomes) {
                if let (Some(ci), Some(o)) = (route, outcome)
                    && *ci == tap.cohort
                {
                    tap.offer(&input.message, o);
                }
            }
        }
    }
}

/// A batch for the worker: the live set it is transformed with, its messages and routes.
struct Job {
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    inputs: Vec<Input>,
    routes: Vec<Option<usize>>,
}

/// A transformed batch: the messages (lent to the plugins and back), routes, outcomes.
struct Done {
    inputs: Vec<Input>,
    routes: Vec<Option<usize>>,
    outcomes: Vec<Option<Outcome>>,
    /// The worker ran at the penalty priority and this batch was clean: it has ended, and
    /// the lane starts a fresh one at normal priority.
    retired: bool,
}

/// After a batch in which a plugin timed out, the worker rests this many times the CPU
/// time the batch used before it takes the next: a group whose plugin spins on every
/// message uses at most an eighth of a core. (CPU time, not wall time: a batch that
/// waited long for the CPU on a busy host does not earn a long rest.) Priority alone is
/// not enough: on a host whose cores share execution units or caches (SMT, a VM's vCPUs)
/// a spinning thread slows its neighbours whatever its priority. Measured on a two-vCPU
/// VM: at nice 19 resting three times as long, a spinning group raised a healthy one's p99
/// by up to 10 %; under `SCHED_IDLE` resting seven times, by at most 5.3 % in nine runs.
/// The group's own backlog waits at its broker session.
const PENALTY_REST: u32 = 7;

/// A lane's transform worker: one OS thread running its plugins, so that a plugin
/// spinning until its deadline occupies this thread, not the runtime's, and not another
/// group's worker.
struct Worker {
    group: String,
    /// The group's nice value, if it has its own.
    nice: Option<i32>,
    jobs: std::sync::mpsc::Sender<(Job, oneshot::Sender<Done>)>,
}

impl Worker {
    fn start(group: &str, nice: Option<i32>) -> Result<Worker, String> {
        let (jobs, rx) = std::sync::mpsc::channel::<(Job, oneshot::Sender<Done>)>();
        let name = group.to_owned();
        std::thread::Builder::new()
            .name(format!("weir-{group}"))
            .spawn(move || {
                if let Some(nice) = nice {
                    crate::priority::set_nice(nice);
                }
                let mut penalised = false;
                // The thread's CPU time at the end of the last batch: between batches it
                // only waits, so one reading per batch gives the CPU each one used.
                let mut cpu = crate::priority::thread_cpu();
                // Ends when the lane drops its sender, or once it recovered from a penalty.
                while let Ok((mut job, done)) = rx.recv() {
                    let outcomes = transform(&job.live, &job.metrics, &mut job.inputs, &job.routes);
                    let before = std::mem::replace(&mut cpu, crate::priority::thread_cpu());
                    let took = cpu.saturating_sub(before);
                    let timed_out = outcomes.iter().any(|o| {
                        matches!(o, Some(Outcome::Fail { code, .. }) if *code == crate::transform::codes::TIMEOUT)
                    });
                    if timed_out && !penalised {
                        // A plugin that spins to its deadline burns a core for nothing; at
                        // the lowest priority it gets almost no CPU while anything else
                        // wants it, so other groups' I/O, the broker and Kafka on the same
                        // host are not slowed by it. Its deadlines are CPU time, so waiting for
                        // the CPU does not make it time out.
                        penalised = crate::priority::set_idle();
                        tracing::warn!(group = %name, lowered = penalised, "a plugin of this group ran past its CPU budget: its worker runs at the lowest CPU priority until a batch runs clean");
                    }
                    let retired = penalised && !timed_out;
                    let _ = done.send(Done {
                        inputs: job.inputs,
                        routes: job.routes,
                        outcomes,
                        retired,
                    });
                    if retired {
                        tracing::info!(group = %name, "the group's plugins run clean again: back to normal priority");
                        return;
                    }
                    if timed_out {
                        std::thread::sleep(took * PENALTY_REST);
                    }
                }
            })
            .map_err(|e| format!("cannot start group {group:?}'s transform worker: {e}; the host is out of threads or memory (check ulimit -u and the memory limit)"))?;
        Ok(Worker {
            group: group.to_owned(),
            nice,
            jobs,
        })
    }

    /// Transform a batch on the worker; why not if the worker is gone. A worker that
    /// retired after a penalty is replaced.
    async fn run(&mut self, job: Job) -> Result<Done, String> {
        let gone = || {
            format!(
                "group {:?}'s transform worker ended while transforming a batch (a panic, see the log above); weir stops, the broker redelivers what was not acknowledged — restart weir, and report the log",
                self.group
            )
        };
        let (tx, rx) = oneshot::channel();
        self.jobs.send((job, tx)).map_err(|_| gone())?;
        let done = rx.await.map_err(|_| gone())?;
        if done.retired {
            *self = Worker::start(&self.group, self.nice)?;
        }
        Ok(done)
    }
}

/// The courier's task: plan and start each message handed over, feed Kafka's answers
/// back, send retries when due; when the pipeline stops handing over, finish what was
/// started and end.
async fn deliver(
    mut courier: Courier,
    sink: Sink,
    metrics: Arc<Metrics>,
    group: GroupMetrics,
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
                group.oldest_unacked_seconds.set(age);
                metrics.refresh_oldest();
            }
            w = work.recv(), if open => match w {
                Some(w) => {
                    #[cfg(debug_assertions)]
                    crate::failpoint("courier-panic");
                    courier.take(&w.topology, w.messages).await
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

/// Run each cohort's plugin over its share of the batch (`routes`: each message's cohort);
/// `None` for messages that are not transformed (unrouted, oversize).
pub fn transform(
    live: &Live,
    metrics: &Metrics,
    inputs: &mut [Input],
    routes: &[Option<usize>],
) -> Vec<Option<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
    for (ci, plugin) in live.plugins.iter().enumerate() {
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
        let results = plugin.process(&mut group);
        metrics
            .transform_seconds
            .get_or_create(&CohortLabel {
                cohort: live.topology.cohorts[ci].name.clone(),
            })
            .observe(started.elapsed());
        for ((i, o), m) in idx.into_iter().zip(results).zip(group) {
            outcomes[i] = Some(o);
            inputs[i].message = m;
        }
    }
    outcomes
}

/// Ends when a producer has failed fatally (its probe, [`Sink::watch`], ends), with why;
/// never if none does.
async fn fatal(probes: &mut [AbortOnDrop<String>]) -> String {
    if probes.is_empty() {
        return std::future::pending().await;
    }
    let ended = futures::future::select_all(probes.iter_mut().map(|p| &mut p.0)).await;
    match ended.0 {
        Ok(why) => why,
        Err(e) => format!("a Kafka producer's probe ended: {e}"),
    }
}

/// Spawn `task`, aborted when the handle is dropped. If it panics, the panic is reported
/// on `panics` as the pipeline's failure: an unexpected end stops weir with an error, never
/// as a quiet "everything was acknowledged".
fn supervised(
    name: String,
    panics: mpsc::UnboundedSender<String>,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> AbortOnDrop {
    use futures::FutureExt;
    AbortOnDrop(tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
            let what = crate::panic_message(&*panic);
            let _ = panics.send(format!(
                "{name} panicked ({what}); what it held stays unacknowledged with the broker"
            ));
        }
    }))
}

/// A task, aborted when its handle is dropped.
struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_gets_half_the_cores_for_its_io_from_one_to_four() {
        let threads: Vec<usize> = [1, 2, 3, 4, 6, 8, 16, 64]
            .into_iter()
            .map(lane_io_threads)
            .collect();
        assert_eq!(threads, [1, 1, 1, 2, 3, 4, 4, 4]);
    }

    #[tokio::test]
    async fn a_task_that_panics_is_reported_and_one_that_ends_is_not() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _quiet = supervised("a quiet task".into(), tx.clone(), async {});
        let _courier = supervised("group \"a\"'s courier".into(), tx, async {
            panic!("boom {}", 7)
        });
        let why = rx.recv().await.expect("the panic is reported");
        assert!(
            why.starts_with("group \"a\"'s courier panicked (boom 7)"),
            "{why}"
        );
        assert!(rx.recv().await.is_none(), "a normal end is not reported");
    }

    #[tokio::test]
    async fn chunks_make_batches_of_at_most_the_size_in_order_and_the_rest_waits() {
        let (tx, mut rx) = mpsc::channel::<Vec<u32>>(8);
        let mut left = VecDeque::new();
        let wait = Duration::from_millis(5);
        tx.send(vec![1, 2, 3]).await.unwrap();
        tx.send(vec![4, 5, 6, 7]).await.unwrap();
        let b = next_batch(&mut rx, &mut left, 5, wait).await.unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5]);
        assert_eq!(left, [6, 7]);
        // One at a time: the rest goes first, in order, before the channel is looked at.
        tx.send(vec![8, 9]).await.unwrap();
        let b = next_batch(&mut rx, &mut left, 1, wait).await.unwrap();
        assert_eq!(b, [6]);
        let b = next_batch(&mut rx, &mut left, 1, wait).await.unwrap();
        assert_eq!(b, [7]);
        assert!(left.is_empty());
        // A batch short of its size waits `wait` for more and goes without.
        let b = next_batch(&mut rx, &mut left, 5, wait).await.unwrap();
        assert_eq!(b, [8, 9]);
        // A chunk larger than two batches is split across them.
        tx.send((10..22).collect()).await.unwrap();
        let b = next_batch(&mut rx, &mut left, 5, wait).await.unwrap();
        assert_eq!(b, [10, 11, 12, 13, 14]);
        let b = next_batch(&mut rx, &mut left, 5, wait).await.unwrap();
        assert_eq!(b, [15, 16, 17, 18, 19]);
        drop(tx);
        // What is left goes out after the source closed; then nothing.
        let b = next_batch(&mut rx, &mut left, 5, wait).await.unwrap();
        assert_eq!(b, [20, 21]);
        assert!(next_batch(&mut rx, &mut left, 5, wait).await.is_none());
    }

    #[test]
    fn message_ids_are_the_lane_prefix_and_the_sequence_in_hex() {
        let mut ids = MessageIds::default();
        let prefix = ids.run.clone();
        assert_eq!(prefix.len(), 17);
        for n in [0u64, 1, 15, 16, 255, 4096, 0xdead_beef] {
            ids.next = n;
            assert_eq!(ids.assign(), format!("{prefix}{n:x}"));
        }
        ids.next = u64::MAX;
        assert_eq!(ids.assign(), format!("{prefix}ffffffffffffffff"));
        assert_ne!(
            MessageIds::default().run,
            prefix,
            "each lane has its own prefix"
        );
    }

    #[test]
    fn a_rate_spaces_batches_and_an_idle_group_starts_at_once() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let mut pace = Pace::new(100);
        // The first batch goes at once; the next waits for the first's share (10 ms each).
        assert_eq!(pace.admit(t0, 5), t0);
        assert_eq!(pace.admit(t0 + ms(1), 20), t0 + ms(50));
        assert_eq!(pace.admit(t0 + ms(60), 1), t0 + ms(250));
        // Idle past its booking: no debt, no credit either.
        assert_eq!(pace.admit(t0 + ms(1000), 3), t0 + ms(1000));
        assert_eq!(pace.admit(t0 + ms(1000), 1), t0 + ms(1030));
        // Over a stretch it takes at most its rate plus one batch.
        let mut pace = Pace::new(1000);
        let mut taken = 0;
        while pace.admit(t0, 64) < t0 + Duration::from_secs(2) {
            taken += 64;
        }
        assert!((2000..=2000 + 64).contains(&taken), "{taken}");
    }
}
