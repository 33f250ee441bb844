//! The sink stage: an idempotent, acks=all Kafka producer (rdkafka). Writes are enqueued in
//! arrival order, each with a caller's [`Tag`]; Kafka's answers come back as tagged
//! [`Answer`]s, filed by the producer's event thread ([`events`]) a batch at a time and
//! taken in bulk (one wake-up for many answers, no future per write). Any librdkafka
//! property can be set from config, except those the no-loss guarantee rests on.
//!
//! Writes never expire (`message.timeout.ms=0`): while Kafka is down they wait, weir stops
//! reading at its in-flight bound, and the MQTT broker keeps the backlog. A write that does
//! fail is classified ([`Failure`]) so the planning core can decide what happens next.

use crate::config::Kafka;
use crate::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_core::write::{Failure, Write};

pub mod events;
use events::{Producer, Report, Reports};

/// The caller's name for a write, handed back with Kafka's answer.
pub type Tag = usize;

/// Kafka's answer to one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The tag the write was sent with.
    pub tag: Tag,
    /// Acknowledged, or why not.
    pub result: Result<(), Failure>,
}

/// Answers delivered and not yet taken, and the wake-up for whoever waits on them.
#[derive(Default)]
struct Answers {
    queue: Mutex<Vec<Answer>>,
    ready: tokio::sync::Notify,
}

/// The producer's context: it files Kafka's answers (on the producer's event thread) and
/// counts the time brokers throttled it from the statistics.
struct Context {
    answers: Arc<Answers>,
    throttled: std::sync::OnceLock<Counter<f64, AtomicU64>>,
    /// Where each write's time from its hand-off to librdkafka to its answer is counted.
    answer_times: std::sync::OnceLock<crate::metrics::Latency>,
}

impl ClientContext for Context {
    /// Read only the throttle windows. The statistics arrive on the thread that delivers
    /// Kafka's answers, and rdkafka's whole `Statistics` (every broker's request counts,
    /// every partition's figures) is hundreds of maps and strings built to be dropped.
    fn stats_raw(&self, statistics: &[u8]) {
        let Some(counter) = self.throttled.get() else {
            return;
        };
        match throttled_ms(statistics) {
            Ok(ms) if ms > 0 => {
                counter.inc_by(ms as f64 / 1000.0);
            }
            Ok(_) => {}
            // Once: they come every second, and each would say the same.
            Err(e) => STATS_UNREADABLE.call_once(|| {
                tracing::warn!(
                    "librdkafka's statistics could not be read ({e}): weir_kafka_throttled_seconds will not count the time brokers throttle weir"
                );
            }),
        }
    }
}

/// Whether the statistics could not be read has been said.
static STATS_UNREADABLE: std::sync::Once = std::sync::Once::new();

/// The part of librdkafka's statistics weir reads; everything else is skipped unbuilt.
#[derive(serde::Deserialize)]
struct Throttles {
    #[serde(default)]
    brokers: HashMap<String, BrokerThrottle>,
}

#[derive(serde::Deserialize)]
struct BrokerThrottle {
    throttle: Option<Window>,
}

#[derive(serde::Deserialize)]
struct Window {
    sum: i64,
}

/// Milliseconds brokers throttled the client in the statistics' window: each window covers
/// the time since the last statistics, so its sum is new time.
fn throttled_ms(statistics: &[u8]) -> Result<i64, serde_json::Error> {
    let t: Throttles = serde_json::from_slice(statistics)?;
    Ok(t.brokers
        .values()
        .filter_map(|b| b.throttle.as_ref())
        .map(|w| w.sum)
        .sum())
}

impl ProducerContext for Context {
    type DeliveryOpaque = Tag;

    /// Answers rdkafka itself reads (in a flush, and when the producer is dropped).
    fn delivery(&self, result: &DeliveryResult<'_>, tag: Tag) {
        self.reports(&[Report::of(result, tag)]);
    }
}

impl Reports for Context {
    /// File a batch of answers with one lock and one wake-up (on the event thread).
    fn reports(&self, reports: &[Report]) {
        #[cfg(debug_assertions)]
        panic_once_for_tests();
        let answers = reports.iter().map(|r| Answer {
            tag: r.opaque,
            result: match r.kafka_error() {
                None => Ok(()),
                Some(e) => Err(classify(&e)),
            },
        });
        self.answers
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(answers);
        self.answers.ready.notify_one();
    }

    fn answered_after(&self, waited: std::time::Duration) {
        if let Some(times) = self.answer_times.get() {
            times.observe(waited);
        }
    }
}

/// Test builds only: with `WEIR_FAILPOINT=kafka-events-panic`, the first answers a sink's
/// event thread files make it panic (once), so that the tests can show what `weir run` does
/// when Kafka's answers stop being read.
#[cfg(debug_assertions)]
fn panic_once_for_tests() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if crate::failpoint_armed("kafka-events-panic")
        && !DONE.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        panic!("failpoint kafka-events-panic");
    }
}

/// Classify a Kafka error by what the plan should do next.
pub fn classify(e: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    let why = e.to_string();
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Failure::TooLarge(why),
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            Failure::Unauthorized(why)
        }
        Some(
            C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTopic
            | C::PolicyViolation
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidRequiredAcks,
        ) => Failure::Permanent(why),
        _ => Failure::Transient(why),
    }
}

/// The producer. One owner takes its answers ([`Sink::answers`]); clones share them.
#[derive(Clone)]
pub struct Sink {
    /// Keeps the producer's SASL password in step with its file, while any clone lives
    /// (first: it lets go of its handle to the producer before `producer` is dropped).
    _password: Option<Arc<crate::credentials::Follower>>,
    producer: Producer<Context>,
    answers: Arc<Answers>,
    config: ClientConfig,
    /// Which producer this is (`group "meters"`), for messages about it.
    name: String,
}

/// Sink errors.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer could not be created (a bad property, usually).
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
    /// The setting would break the no-loss guarantee.
    #[error("kafka.properties.{0} cannot be changed: weir always produces with {0}={1}")]
    Forbidden(String, String),
    /// The connection's security settings cannot be applied (a secret file unreadable).
    #[error("{0}")]
    Security(String),
    /// The thread that reads the producer's events could not be started.
    #[error("cannot start the Kafka producer's event thread: {0}")]
    Thread(std::io::Error),
    /// A topic weir writes to is not usable.
    #[error("{0}")]
    Topic(String),
    /// Kafka did not answer a request to create topics.
    #[error(transparent)]
    CreateTopics(#[from] crate::topics::TopicError),
}

/// How long a transaction may stay open before Kafka aborts it; its writes expire a little
/// sooner, so a Kafka outage ends in an abort and a retry rather than a stall.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What a transaction call's error means for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// Call it again.
    #[error("{0}")]
    Retry(String),
    /// Abort the transaction, then write it all again.
    #[error("{0}")]
    Abort(String),
    /// This producer can write no more: fenced by a newer holder of its transactional id, or
    /// failed fatally.
    #[error("{0}")]
    Fatal(String),
}

fn txn_error(e: KafkaError) -> TxnError {
    // Kafka's error code by name as well as librdkafka's text: the name is what a search
    // of Kafka's documentation finds.
    let why = match e.rdkafka_error_code() {
        Some(code) => format!("{e} ({code:?})"),
        None => e.to_string(),
    };
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => TxnError::Fatal(why),
        KafkaError::Transaction(t) if t.txn_requires_abort() => TxnError::Abort(why),
        KafkaError::Transaction(t) if t.is_retriable() => TxnError::Retry(why),
        _ => match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::UnsupportedVersion
                | RDKafkaErrorCode::UnsupportedForMessageFormat,
            ) => TxnError::Fatal(why),
            _ => TxnError::Abort(why),
        },
    }
}

/// The producer's queue is bounded (so is weir's memory): at most this many KiB wait in
/// librdkafka unless `queue.buffering.max.kbytes` is set.
const QUEUE_KBYTES: &str = "65536";

impl Sink {
    /// A producer for `cfg`: `enable.idempotence=true`, `acks=all`, and no delivery timeout.
    /// `name` says which (e.g. `group "meters"`), for messages about it.
    pub fn new(cfg: &Kafka, name: &str) -> Result<Sink, SinkError> {
        Sink::build(cfg, name, None)
    }

    /// A transactional producer under `transactional_id` (an exactly-once session's), with
    /// the same guarantees; writes then expire after [`TRANSACTION_TIMEOUT`], which aborts
    /// the transaction and has it written again. [`Sink::init_transactions`] must come
    /// first.
    pub fn transactional(
        cfg: &Kafka,
        name: &str,
        transactional_id: &str,
    ) -> Result<Sink, SinkError> {
        Sink::build(cfg, name, Some(transactional_id))
    }

    fn build(cfg: &Kafka, name: &str, transactional_id: Option<&str>) -> Result<Sink, SinkError> {
        let mut c =
            crate::capture::connection(cfg).map_err(|e| SinkError::Security(e.to_string()))?;
        c.set("linger.ms", "5")
            .set("compression.type", "none")
            .set("queue.buffering.max.kbytes", QUEUE_KBYTES)
            // Once a second, for the time brokers throttle weir under a quota.
            .set("statistics.interval.ms", "1000");
        for (k, v) in &cfg.properties {
            let fixed = match k.as_str() {
                "enable.idempotence" => Some("true"),
                "acks" | "request.required.acks" => Some("all"),
                "transactional.id" => Some("<none: weir names exactly-once sessions' own>"),
                _ => None,
            };
            if let Some(f) = fixed
                && v != f
                && !(f == "all" && v == "-1")
            {
                return Err(SinkError::Forbidden(k.clone(), f.into()));
            }
            c.set(k, v);
        }
        c.set("enable.idempotence", "true").set("acks", "all");
        match transactional_id {
            None => c.set("message.timeout.ms", "0"),
            Some(id) => {
                let ms = TRANSACTION_TIMEOUT.as_millis();
                c.set("transactional.id", id)
                    .set("transaction.timeout.ms", ms.to_string())
                    .set("message.timeout.ms", (ms - 5_000).to_string())
            }
        };
        let answers = Arc::new(Answers::default());
        let producer: BaseProducer<Context> = c
            .create_with_context(Context {
                answers: answers.clone(),
                throttled: std::sync::OnceLock::new(),
                answer_times: std::sync::OnceLock::new(),
            })
            .map_err(SinkError::Create)?;
        let producer = Producer::start(producer, "weir-kafka-dr").map_err(SinkError::Thread)?;
        let follower = crate::credentials::follow(cfg, &format!("{name}'s producer"), {
            let producer = producer.clone();
            move |file| file.refresh(producer.client())
        })
        .map_err(SinkError::Security)?;
        Ok(Sink {
            _password: follower.map(Arc::new),
            producer,
            answers,
            config: c,
            name: name.to_owned(),
        })
    }

    /// Count the time brokers throttle this producer (produce quotas) in `counter`.
    pub fn count_throttling(&self, counter: Counter<f64, AtomicU64>) {
        let _ = self.producer.context().throttled.set(counter);
    }

    /// Count in `times`, for each write, the time from its hand-off to librdkafka to its
    /// answer: Kafka's own share of a write's time, without weir's wait to take the answer.
    pub fn count_answer_times(&self, times: crate::metrics::Latency) {
        let _ = self.producer.context().answer_times.set(times);
    }

    /// Check, with metadata requests, that every topic weir writes to exists or can be
    /// created; create missing ones with the broker's defaults. Errors name the topic and
    /// the fix.
    pub async fn check_topics(&self, topics: &[(String, String)]) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let missing = tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for t in &names {
                match producer
                    .client()
                    .fetch_metadata(Some(t), Duration::from_secs(10))
                {
                    Ok(md) => match md.topics().first() {
                        Some(topic)
                            if topic.error().is_none() && !topic.partitions().is_empty() => {}
                        Some(topic) => missing.push((
                            t.clone(),
                            topic
                                .error()
                                .map(|e| format!("{:?}", RDKafkaErrorCode::from(e)))
                                .unwrap_or_else(|| "no partitions".into()),
                        )),
                        None => missing.push((t.clone(), "not in the metadata".into())),
                    },
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(missing)
        })
        .await
        .map_err(|e| SinkError::Topic(e.to_string()))?
        .map_err(|e| {
            SinkError::Topic(format!(
                "cannot read Kafka metadata: {e}; check kafka.bootstrap and that the brokers are up"
            ))
        })?;
        if missing.is_empty() {
            return Ok(());
        }
        // The config key that names a topic, for messages about it.
        let key_of = |topic: &str| {
            topics
                .iter()
                .find(|(t, _)| t == topic)
                .map_or("-", |(_, k)| k.as_str())
        };
        if let Some((topic, _)) = missing
            .iter()
            .find(|(_, why)| why == "TopicAuthorizationFailed")
        {
            let key = key_of(topic);
            return Err(SinkError::Topic(format!(
                "{key}: Kafka does not let weir's principal describe topic {topic:?} (TopicAuthorizationFailed); grant it DESCRIBE and WRITE on the topic, e.g. kafka-acls --add --allow-principal User:<weir's principal> --operation Describe --operation Write --topic {topic}"
            )));
        }
        let admin: AdminClient<DefaultClientContext> =
            self.config.create().map_err(SinkError::Create)?;
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(t, _)| NewTopic::new(t, -1, TopicReplication::Fixed(-1)))
            .collect();
        let failed = crate::topics::create(&admin, &new).await?;
        if let Some((topic, code)) = failed.first() {
            let key = key_of(topic);
            let was = missing
                .iter()
                .find(|(t, _)| t == topic)
                .map_or("", |(_, w)| w.as_str());
            return Err(SinkError::Topic(format!(
                "{key}: Kafka topic {topic:?} does not exist ({was}) and cannot be created ({code:?}); create it, or grant weir's principal CREATE on it, or name a topic that exists"
            )));
        }
        for (t, _) in &missing {
            tracing::info!(topic = %t, "created Kafka topic");
        }
        Ok(())
    }

    /// Probe, every second or two until the returned task is aborted, whether Kafka can take
    /// writes to `topics`: every partition has a leader and at least its topic's
    /// `min.insync.replicas` in sync (else an `acks=all` write waits). What it finds is
    /// `/readyz`'s Kafka part for this producer. The task ends, with the reason, only when
    /// the producer has failed fatally and can write no more.
    pub fn watch(
        &self,
        metrics: Arc<Metrics>,
        topics: Vec<String>,
    ) -> tokio::task::JoinHandle<String> {
        let producer = self.producer.clone();
        let name = self.name.clone();
        metrics.set_kafka_problem(&name, Some("Kafka not probed yet".into()));
        let admin: Option<AdminClient<DefaultClientContext>> = self.config.create().ok();
        tokio::spawn(async move {
            let mut min_isr = HashMap::new();
            let mut described: Option<std::time::Instant> = None;
            loop {
                if let Some(why) = producer.events_ended() {
                    let why = format!(
                        "the Kafka producer of {name} no longer reads Kafka's answers: its event thread {why}; weir stops so that its supervisor restarts it (what is unacknowledged stays with the MQTT broker)"
                    );
                    metrics.set_kafka_problem(&name, Some(why.clone()));
                    return why;
                }
                // A fatal error (e.g. an idempotent producer fenced or out of sequence)
                // leaves the producer unable to write again; retrying its writes would
                // stall for ever.
                if let Some((code, reason)) = producer.client().fatal_error() {
                    let why = format!(
                        "the Kafka producer of {name} failed fatally ({code:?}: {reason}); weir stops so that its supervisor restarts it with a new producer (what is unacknowledged stays with the MQTT broker)"
                    );
                    metrics.set_kafka_problem(&name, Some(why.clone()));
                    return why;
                }
                if described.is_none_or(|d| d.elapsed() > Duration::from_secs(60))
                    && let Some(admin) = &admin
                {
                    min_isr = min_in_sync(admin, &topics).await;
                    described = Some(std::time::Instant::now());
                }
                let (p, t) = (producer.clone(), topics.clone());
                let problem = tokio::task::spawn_blocking(move || partitions(&p, &t))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                    .map_or_else(
                        |e| Some(format!("Kafka not reachable: {e}")),
                        |parts| write_problem(&parts, &min_isr),
                    );
                let ok = problem.is_none();
                metrics.set_kafka_problem(&name, problem);
                tokio::time::sleep(Duration::from_secs(if ok { 2 } else { 1 })).await;
            }
        })
    }

    /// librdkafka's handle of the producer, for tests that inject its faults
    /// (`rd_kafka_test_fatal_error`).
    #[doc(hidden)]
    pub fn native_handle(&self) -> *mut rdkafka::types::RDKafka {
        self.producer.client().native_ptr()
    }

    /// Test builds only: with `WEIR_FAILPOINT=producer-fatal`, the process's first write makes
    /// librdkafka fail this producer fatally, as a fenced or out-of-sequence idempotent
    /// producer does, so that the tests can show what `weir run` does then.
    #[cfg(debug_assertions)]
    fn fail_fatally_once_for_tests(&self) {
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if crate::failpoint_armed("producer-fatal")
            && !DONE.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let reason = c"injected by WEIR_FAILPOINT=producer-fatal";
            // SAFETY: the handle is this live producer's, and the reason is a static C string.
            #[allow(unsafe_code)]
            unsafe {
                rdkafka::bindings::rd_kafka_test_fatal_error(
                    self.native_handle(),
                    rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                    reason.as_ptr(),
                );
            }
        }
    }

    /// Enqueue a write (waiting while the producer's queue is full). Its answer comes back
    /// through [`Sink::answers`] with `tag`; an error here means it was not enqueued and no
    /// answer will come.
    pub async fn send(&self, w: &Write, tag: Tag) -> Result<(), Failure> {
        self.send_to(w, None, tag).await
    }

    /// [`Sink::send`] to a given partition (`None`: the one the key hashes to).
    pub async fn send_to(
        &self,
        w: &Write,
        partition: Option<i32>,
        tag: Tag,
    ) -> Result<(), Failure> {
        #[cfg(debug_assertions)]
        self.fail_fatally_once_for_tests();
        loop {
            match self.producer.produce(w, partition, tag) {
                Ok(()) => return Ok(()),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(error) => return Err(classify(&error)),
            }
        }
    }

    /// Wait until Kafka has answered at least one write, then move every answer waiting
    /// into `out`.
    pub async fn answers(&self, out: &mut Vec<Answer>) {
        loop {
            {
                let mut q = self
                    .answers
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !q.is_empty() {
                    out.append(&mut q);
                    return;
                }
            }
            // A notification between the check and here is kept as a permit.
            self.answers.ready.notified().await;
        }
    }

    /// Why the producer's event thread ended, if it did: no answer comes after that.
    pub fn events_ended(&self) -> Option<String> {
        self.producer.events_ended().map(str::to_owned)
    }

    /// [`Sink::answers`] for callers that would otherwise wait for ever: once a second
    /// without answers it checks the event thread, and gives up with the reason it ended.
    pub async fn answers_while_read(&self, out: &mut Vec<Answer>) -> Result<(), String> {
        loop {
            tokio::select! {
                () = self.answers(out) => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Some(why) = self.events_ended() {
                        return Err(why);
                    }
                }
            }
        }
    }

    /// Wait until at most `keep` of `outstanding` writes are unanswered; returns how many
    /// of those answered failed. For callers that count writes rather than track each. If
    /// the producer's event thread has ended, no answer can come: every outstanding write
    /// counts as failed.
    pub async fn settle(&self, outstanding: &mut usize, keep: usize) -> usize {
        let mut failed = 0;
        let mut got = Vec::new();
        while *outstanding > keep {
            if let Err(why) = self.answers_while_read(&mut got).await {
                tracing::error!(
                    producer = %self.name,
                    "{} writes will not be answered: the Kafka producer's event thread {why}",
                    *outstanding
                );
                failed += std::mem::take(outstanding);
                break;
            }
            *outstanding = outstanding.saturating_sub(got.len());
            failed += got.iter().filter(|a| a.result.is_err()).count();
            got.clear();
        }
        failed
    }

    /// Fence earlier producers of this transactional id (their open transaction is
    /// aborted) and make this one its holder. Blocks; call it off the async workers.
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), TxnError> {
        self.producer.init_transactions(timeout).map_err(txn_error)
    }

    /// Open a transaction.
    pub fn begin_transaction(&self) -> Result<(), TxnError> {
        self.producer.begin_transaction().map_err(txn_error)
    }

    /// Commit the open transaction (everything enqueued is delivered first). Blocks.
    pub fn commit_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        self.producer.commit_transaction(timeout).map_err(txn_error)
    }

    /// Abort the open transaction. Blocks.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        self.producer.abort_transaction(timeout).map_err(txn_error)
    }

    /// Wait for everything enqueued to be delivered (bounded by `timeout`).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "Kafka flush did not finish");
        }
    }
}

/// One partition weir writes, as the brokers' metadata describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The leader's node id; negative when there is none.
    pub leader: i32,
    /// How many replicas are in sync.
    pub in_sync: usize,
}

/// The partitions of `topics`, from a metadata request per topic (the brokers answer from
/// their controller's view).
fn partitions(
    producer: &BaseProducer<Context>,
    topics: &[String],
) -> Result<Vec<PartitionState>, String> {
    let mut out = Vec::new();
    for t in topics {
        let md = producer
            .client()
            .fetch_metadata(Some(t), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        if md.brokers().is_empty() {
            return Err("no broker in the metadata".into());
        }
        for topic in md.topics() {
            if let Some(e) = topic.error() {
                out.push(PartitionState {
                    topic: topic.name().to_owned(),
                    partition: -1,
                    leader: -1,
                    in_sync: 0,
                });
                tracing::debug!(topic = topic.name(), error = ?RDKafkaErrorCode::from(e), "metadata");
                continue;
            }
            for p in topic.partitions() {
                out.push(PartitionState {
                    topic: topic.name().to_owned(),
                    partition: p.id(),
                    leader: if p.error().is_some() { -1 } else { p.leader() },
                    in_sync: p.isr().len(),
                });
            }
        }
    }
    Ok(out)
}

/// Each topic's `min.insync.replicas`, as far as the brokers say (a principal that may not
/// describe configs gets none: only leaders are checked then).
async fn min_in_sync(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
) -> HashMap<String, usize> {
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let Ok(Ok(results)) = tokio::time::timeout(
        Duration::from_secs(6),
        admin.describe_configs(specs.iter(), &options),
    )
    .await
    else {
        return HashMap::new();
    };
    results
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let OwnedResourceSpecifier::Topic(topic) = &r.specifier else {
                return None;
            };
            let n = r.get("min.insync.replicas")?.value.as_ref()?.parse().ok()?;
            Some((topic.clone(), n))
        })
        .collect()
}

/// Why Kafka cannot take `acks=all` writes to `partitions` now (the first such partition,
/// and how many more), given each topic's `min.insync.replicas`; `None` when it can.
pub fn write_problem(
    partitions: &[PartitionState],
    min_isr: &HashMap<String, usize>,
) -> Option<String> {
    let problems: Vec<String> = partitions
        .iter()
        .filter_map(|p| {
            let name = format!("{}[{}]", p.topic, p.partition.max(0));
            if p.leader < 0 {
                return Some(format!("Kafka partition {name} has no leader"));
            }
            let need = min_isr.get(&p.topic).copied().unwrap_or(1);
            (p.in_sync < need).then(|| {
                format!(
                    "Kafka partition {name} has {} in-sync replica(s), fewer than its min.insync.replicas={need}: Kafka refuses its writes until a replica catches up",
                    p.in_sync
                )
            })
        })
        .collect();
    let first = problems.first()?;
    Some(match problems.len() {
        1 => first.clone(),
        n => format!("{first} (and {} more partitions)", n - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_time_is_summed_over_brokers_from_the_statistics() {
        let stats = br#"{"name":"rdkafka#producer-1","ts":1,"msg_cnt":3,
            "brokers":{
              "127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","state":"UP",
                "rtt":{"min":1,"max":9,"avg":3,"sum":30,"cnt":10},
                "throttle":{"min":0,"max":120,"avg":40,"sum":120,"cnt":3,"p99":120},
                "req":{"Produce":12,"Metadata":2},
                "toppars":{"t-0":{"topic":"t","partition":0}}},
              "127.0.0.1:9093/2":{"name":"127.0.0.1:9093/2",
                "throttle":{"min":0,"max":30,"avg":30,"sum":30,"cnt":1}},
              "GroupCoordinator":{"name":"GroupCoordinator","state":"INIT"}},
            "topics":{"t":{"topic":"t","partitions":{"0":{"partition":0,"txmsgs":3}}}}}"#;
        assert_eq!(throttled_ms(stats).unwrap(), 150);
        assert_eq!(throttled_ms(br#"{"name":"p","brokers":{}}"#).unwrap(), 0);
        assert_eq!(throttled_ms(br#"{"name":"p"}"#).unwrap(), 0);
        assert!(throttled_ms(b"not json").is_err());
    }

    #[test]
    fn kafka_takes_writes_only_with_a_leader_and_enough_in_sync_replicas() {
        let part = |topic: &str, partition, leader, in_sync| PartitionState {
            topic: topic.into(),
            partition,
            leader,
            in_sync,
        };
        let min: HashMap<String, usize> = [("out".to_owned(), 2)].into();
        assert_eq!(
            write_problem(&[part("out", 0, 1, 3), part("q", 0, 2, 1)], &min),
            None
        );
        let why = write_problem(&[part("out", 0, 1, 1)], &min).unwrap();
        assert!(
            why.contains("out[0]") && why.contains("min.insync.replicas=2"),
            "{why}"
        );
        let why = write_problem(&[part("q", 0, -1, 0), part("out", 1, -1, 0)], &min).unwrap();
        assert!(
            why.starts_with("Kafka partition q[0] has no leader") && why.contains("1 more"),
            "{why}"
        );
        // A topic whose setting could not be read needs one in-sync replica.
        assert!(write_problem(&[part("q", 0, 1, 0)], &HashMap::new()).is_some());
    }

    #[test]
    fn failures_are_classified() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::TooLarge(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Unauthorized(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::InvalidRecord)),
            Failure::Permanent(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::BrokerTransportFailure)),
            Failure::Transient(_)
        ));
    }
}
