//! Creating Kafka topics, in one place: every topic weir creates (the control topic, the
//! cohorts' output, quarantine and raw topics) goes through [`create`], which asks again
//! while the broker answers with an error that passes by itself.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::{Duration, Instant};

/// How long creation keeps asking a broker whose answer may pass (one that has just
/// started, a controller moving).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Create `topics`; a topic that exists already counts as created. Returns, for each topic
/// that could not be created, its name and Kafka's error; `Err` when Kafka did not answer.
pub async fn create(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
) -> Result<Vec<(String, RDKafkaErrorCode)>, String> {
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
        .map_err(|_| {
            "Kafka did not answer within 15 s; check kafka.bootstrap and that the brokers are up"
                .to_owned()
        })?
        .map_err(|e| {
            format!("cannot create topics: {e}; check kafka.bootstrap and that the brokers are up")
        })?;
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
