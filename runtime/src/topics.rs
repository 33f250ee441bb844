//! Creating Kafka topics, in one place: every topic weir creates (the cohorts' output,
//! quarantine and raw topics through [`create`]; its own control, slots and sessions topics
//! through [`ensure`]) asks again while the broker answers with an error that passes by
//! itself.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::time::{Duration, Instant};

/// Creating a topic, or finding it, failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// librdkafka would not create a client.
    #[error("cannot create a Kafka {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// librdkafka's reason.
        #[source]
        source: KafkaError,
    },
    /// Kafka did not answer the request in time.
    #[error("Kafka did not answer within 15 s; check kafka.bootstrap and that the brokers are up")]
    Timeout,
    /// The request failed as a whole.
    #[error("cannot create topics: {0}; check kafka.bootstrap and that the brokers are up")]
    Request(#[source] KafkaError),
    /// Kafka refused to create the topic, and it does not exist.
    #[error("{topic:?} does not exist and cannot be created ({code:?}); {fix}")]
    NotCreated {
        /// The topic.
        topic: String,
        /// Kafka's answer.
        code: RDKafkaErrorCode,
        /// How to create it by hand, or what to grant.
        fix: String,
    },
    /// The brokers' metadata for the topic could not be read.
    #[error("cannot read the partitions of {topic:?}: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// The blocking metadata read ended abnormally.
    #[error("reading the partitions of a topic: {0}")]
    Join(#[source] tokio::task::JoinError),
}

/// How long creation keeps asking a broker whose answer may pass (one that has just
/// started, a controller moving).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Create `topics`; a topic that exists already counts as created. Returns, for each topic
/// that could not be created, its name and Kafka's error; `Err` when Kafka did not answer.
pub async fn create(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
) -> Result<Vec<(String, RDKafkaErrorCode)>, TopicError> {
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let started = Instant::now();
    let mut left: Vec<&NewTopic<'_>> = topics.iter().collect();
    loop {
        let results = tokio::time::timeout(
            Duration::from_secs(15),
            admin.create_topics(left.iter().copied(), &options),
        )
        .await
        .map_err(|_| TopicError::Timeout)?
        .map_err(TopicError::Request)?;
        let failed: Vec<(String, RDKafkaErrorCode)> = results
            .into_iter()
            .filter_map(Result::err)
            .filter(|(_, code)| *code != RDKafkaErrorCode::TopicAlreadyExists)
            .collect();
        for t in &left {
            if !failed.iter().any(|(name, _)| name == t.name) {
                tracing::debug!(topic = t.name, "Kafka topic created or present");
            }
        }
        if failed.iter().all(|(_, code)| passing(*code))
            && !failed.is_empty()
            && started.elapsed() < PATIENCE
        {
            tracing::warn!(
                ?failed,
                "the broker could not say whether the topics exist yet; asking again"
            );
            left.retain(|t| failed.iter().any(|(name, _)| name == t.name));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        return Ok(failed);
    }
}

/// One of weir's own topics: create `new` if it does not exist (a principal without CREATE
/// is refused even for a topic that exists, and may use it), then wait until the brokers
/// list its partitions; returns how many it has. `fix` says how to create it by hand.
pub async fn ensure(
    base: &ClientConfig,
    new: NewTopic<'_>,
    fix: &str,
) -> Result<usize, TopicError> {
    let admin: AdminClient<DefaultClientContext> =
        base.create().map_err(|source| TopicError::Client {
            what: "admin client",
            source,
        })?;
    let topic = new.name.to_owned();
    let failed = create(&admin, &[new]).await?;
    let probe: BaseConsumer = base.create().map_err(|source| TopicError::Client {
        what: "metadata client",
        source,
    })?;
    let refused = failed.first().map(|(_, code)| *code);
    let name = topic.clone();
    // Just created, or created by another process starting at the same time, the topic may
    // not show its partitions yet; one weir may not create is only looked up.
    let found = tokio::task::spawn_blocking(move || partitions(&probe, &name, refused.is_none()))
        .await
        .map_err(TopicError::Join)??;
    match refused {
        Some(code) if found == 0 || !unauthorized(code) => Err(TopicError::NotCreated {
            topic,
            code,
            fix: fix.to_owned(),
        }),
        _ => Ok(found),
    }
}

/// How many partitions the brokers list for `topic`; with `wait`, asks again for up to
/// [`PATIENCE`] while they list none.
fn partitions(probe: &BaseConsumer, topic: &str, wait: bool) -> Result<usize, TopicError> {
    let started = Instant::now();
    loop {
        let md = probe
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|source| TopicError::Metadata {
                topic: topic.to_owned(),
                source,
            })?;
        let t = md.topics().first();
        let found = t
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if found > 0 || !wait || started.elapsed() > PATIENCE {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kafka refused the principal, not the topic.
fn unauthorized(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// Whether a broker's error on creating a topic may pass by itself: a broker still
/// loading, no controller yet, a request lost.
pub fn passing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Unknown
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::NotController
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_pass_by_themselves_are_asked_again() {
        assert!(passing(RDKafkaErrorCode::NotController));
        assert!(passing(RDKafkaErrorCode::Unknown));
        assert!(!passing(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!passing(RDKafkaErrorCode::InvalidReplicationFactor));
        assert!(!passing(RDKafkaErrorCode::PolicyViolation));
    }
}
