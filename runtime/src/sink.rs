//! The sink stage: an idempotent, acks=all Kafka producer (rdkafka). Writes are enqueued in
//! arrival order, each with a caller's [`Tag`]; Kafka's answers come back as tagged
//! [`Answer`]s, collected by the producer's delivery callback and taken in bulk (one wake-up
//! for many answers, no future per write). Any librdkafka property can be set from config,
//! except those the no-loss guarantee rests on.
//!
//! Writes never expire (`message.timeout.ms=0`): while Kafka is down they wait, weir stops
//! reading at its in-flight bound, and the MQTT broker keeps the backlog. A write that does
//! fail is classified ([`Failure`]) so the planning core can decide what happens next.

use crate::config::Kafka;
use crate::metrics::Metrics;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The producer's context: its delivery callback (on the producer's polling thread) files
/// each answer.
struct Context {
    answers: Arc<Answers>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Tag;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Tag) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(Failure::of(e)),
        };
        self.answers
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Answer { tag, result });
        self.answers.ready.notify_one();
    }
}

/// One Kafka header. weir's own names are static and user-property names owned; values
/// are shared bytes, so a cohort's identity goes onto every record without a copy.
pub type HeaderField = (Cow<'static, str>, Bytes);

/// One Kafka write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Topic.
    pub topic: String,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<HeaderField>,
}

/// Why a write failed, as far as what to do next is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The record is larger than Kafka accepts: writing it again cannot work, a smaller
    /// one might.
    TooLarge(String),
    /// Kafka refuses this record for good (invalid, not authorised, no such topic).
    Permanent(String),
    /// Anything else: worth writing again.
    Transient(String),
}

impl Failure {
    /// Classify a Kafka error.
    pub fn of(e: &KafkaError) -> Failure {
        use RDKafkaErrorCode as C;
        let why = e.to_string();
        match e.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Failure::TooLarge(why),
            Some(
                C::InvalidMessage
                | C::InvalidRecord
                | C::TopicAuthorizationFailed
                | C::InvalidTopic
                | C::PolicyViolation
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::InvalidRequiredAcks,
            ) => Failure::Permanent(why),
            _ => Failure::Transient(why),
        }
    }

    /// What Kafka said.
    pub fn reason(&self) -> &str {
        match self {
            Failure::TooLarge(w) | Failure::Permanent(w) | Failure::Transient(w) => w,
        }
    }
}

/// The producer. One owner takes its answers ([`Sink::answers`]); clones share them.
#[derive(Clone)]
pub struct Sink {
    /// Keeps the producer's SASL password in step with its file, while any clone lives
    /// (first: it lets go of its handle to the producer before `producer` is dropped).
    _password: Option<Arc<crate::credentials::Follower>>,
    producer: ThreadedProducer<Context>,
    answers: Arc<Answers>,
    config: ClientConfig,
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
    /// A topic weir writes to is not usable.
    #[error("{0}")]
    Topic(String),
}

/// The producer's queue is bounded (so is weir's memory): at most this many KiB wait in
/// librdkafka unless `queue.buffering.max.kbytes` is set.
const QUEUE_KBYTES: &str = "65536";

impl Sink {
    /// A producer for `cfg`: `enable.idempotence=true`, `acks=all`, and no delivery timeout.
    /// `name` says which (e.g. `group "meters"`), for messages about it.
    pub fn new(cfg: &Kafka, name: &str) -> Result<Sink, SinkError> {
        let mut c = crate::capture::connection(cfg).map_err(SinkError::Security)?;
        c.set("linger.ms", "5")
            .set("compression.type", "none")
            .set("queue.buffering.max.kbytes", QUEUE_KBYTES);
        for (k, v) in &cfg.properties {
            let fixed = match k.as_str() {
                "enable.idempotence" => Some("true"),
                "acks" | "request.required.acks" => Some("all"),
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
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0");
        let answers = Arc::new(Answers::default());
        let producer: ThreadedProducer<Context> = c
            .create_with_context(Context {
                answers: answers.clone(),
            })
            .map_err(SinkError::Create)?;
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
        })
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
        let admin: AdminClient<DefaultClientContext> =
            self.config.create().map_err(SinkError::Create)?;
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(t, _)| NewTopic::new(t, -1, TopicReplication::Fixed(-1)))
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .map_err(|e| SinkError::Topic(format!("cannot create topics: {e}")))?;
        for r in results {
            if let Err((topic, code)) = &r
                && *code != RDKafkaErrorCode::TopicAlreadyExists
            {
                let key = topics
                    .iter()
                    .find(|(t, _)| t == topic)
                    .map_or("-", |(_, k)| k.as_str());
                let was = missing
                    .iter()
                    .find(|(t, _)| t == topic)
                    .map_or("", |(_, w)| w.as_str());
                return Err(SinkError::Topic(format!(
                    "{key}: Kafka topic {topic:?} does not exist ({was}) and cannot be created ({code:?}); create it, or grant weir's principal CREATE on it, or name a topic that exists"
                )));
            }
            tracing::info!(topic = ?r.ok(), "created Kafka topic");
        }
        Ok(())
    }

    /// Probe Kafka with a metadata request every few seconds and record the result for
    /// `/readyz`, until the returned guard is dropped.
    pub fn watch(&self, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
        let producer = self.producer.clone();
        tokio::spawn(async move {
            loop {
                let p = producer.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    p.client()
                        .fetch_metadata(None, Duration::from_secs(3))
                        .is_ok_and(|md| !md.brokers().is_empty())
                })
                .await
                .unwrap_or(false);
                metrics.set_kafka_ready(ok);
                tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })).await;
            }
        })
    }

    /// Enqueue a write (waiting while the producer's queue is full). Its answer comes back
    /// through [`Sink::answers`] with `tag`; an error here means it was not enqueued and no
    /// answer will come.
    pub async fn send(&self, w: &Write, tag: Tag) -> Result<(), Failure> {
        let mut headers = OwnedHeaders::new_with_capacity(w.headers.len());
        for (k, v) in &w.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_ref()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], Tag> = BaseRecord::with_opaque_to(&w.topic, tag)
            .payload(w.value.as_slice())
            .headers(headers);
        if let Some(k) = &w.key {
            record = record.key(k.as_slice());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => return Err(Failure::of(&error)),
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

    /// Wait until at most `keep` of `outstanding` writes are unanswered; returns how many
    /// of those answered failed. For callers that count writes rather than track each.
    pub async fn settle(&self, outstanding: &mut usize, keep: usize) -> usize {
        let mut failed = 0;
        let mut got = Vec::new();
        while *outstanding > keep {
            self.answers(&mut got).await;
            *outstanding = outstanding.saturating_sub(got.len());
            failed += got.iter().filter(|a| a.result.is_err()).count();
            got.clear();
        }
        failed
    }

    /// Wait for everything enqueued to be delivered (bounded by `timeout`).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "Kafka flush did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(matches!(
            Failure::of(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::TooLarge(_)
        ));
        assert!(matches!(
            Failure::of(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Permanent(_)
        ));
        assert!(matches!(
            Failure::of(&e(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Transient(_)
        ));
        assert!(matches!(
            Failure::of(&e(RDKafkaErrorCode::BrokerTransportFailure)),
            Failure::Transient(_)
        ));
    }
}
