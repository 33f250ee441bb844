//! The sink stage: an idempotent, acks=all Kafka producer (rdkafka). Writes are enqueued in
//! arrival order; each returns a delivery future the ack stage waits on. Any librdkafka
//! property can be set from config, except the two that the no-loss guarantee rests on.

use crate::config::Kafka;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::time::Duration;

/// One Kafka write.
#[derive(Debug, Clone)]
pub struct Write {
    /// Topic.
    pub topic: String,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The producer.
#[derive(Clone)]
pub struct Sink {
    producer: FutureProducer,
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
    /// A write was refused outright.
    #[error("Kafka refused the write to {topic}: {error}")]
    Refused {
        /// Topic.
        topic: String,
        /// Why.
        error: KafkaError,
    },
}

impl Sink {
    /// A producer for `cfg`: `enable.idempotence=true`, `acks=all`, and no delivery timeout
    /// (`message.timeout.ms=0`: while Kafka is down, writes wait rather than fail, and weir
    /// stops reading once its in-flight bound is reached).
    pub fn new(cfg: &Kafka) -> Result<Sink, SinkError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.bootstrap)
            .set("linger.ms", "5")
            .set("compression.type", "none")
            .set("message.timeout.ms", "0");
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
        c.set("enable.idempotence", "true").set("acks", "all");
        let producer = c.create().map_err(SinkError::Create)?;
        Ok(Sink { producer })
    }

    /// Enqueue a write (waiting while the producer's queue is full); the future resolves
    /// when Kafka has acknowledged it.
    pub async fn send(&self, w: &Write) -> Result<DeliveryFuture, SinkError> {
        let mut headers = OwnedHeaders::new_with_capacity(w.headers.len());
        for (k, v) in &w.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&w.topic)
            .payload(w.value.as_slice())
            .headers(headers);
        if let Some(k) = &w.key {
            record = record.key(k.as_slice());
        }
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => {
                    return Err(SinkError::Refused {
                        topic: w.topic.clone(),
                        error,
                    });
                }
            }
        }
    }

    /// Wait for everything enqueued to be delivered (bounded by `timeout`).
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "Kafka flush did not finish");
        }
    }
}
