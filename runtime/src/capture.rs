//! Reading back what weir wrote to Kafka: offset ranges of a topic, records read in order,
//! and a captured message (raw capture or quarantine entry) rebuilt from its headers, as
//! replay and quarantine redrive need them.

use crate::config::Kafka;
use crate::transform::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use weir_core::headers as h;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Reaching or reading Kafka failed: what weir was doing, Kafka's own error as the source,
/// and the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A `[kafka]` setting cannot be used.
    #[error("{0}")]
    Settings(String),
    /// librdkafka would not create a client.
    #[error("cannot create a Kafka {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// librdkafka's reason.
        #[source]
        source: Box<KafkaError>,
    },
    /// Kafka refused weir's login.
    #[error("Kafka refused weir's login: {0}; check kafka.sasl (mechanism, username, password)")]
    Login(String),
    /// TLS with the brokers failed.
    #[error(
        "TLS with Kafka failed: {0}; check kafka.tls.ca_file (the CA that issued the brokers' certificates) and that the brokers speak TLS"
    )]
    Tls(String),
    /// No broker answered.
    #[error(
        "cannot reach Kafka at {bootstrap}: {source}{detail}; check kafka.bootstrap, that the brokers are up, and kafka.tls / kafka.sasl"
    )]
    Unreachable {
        /// `kafka.bootstrap`.
        bootstrap: String,
        /// The last request's error.
        #[source]
        source: Box<KafkaError>,
        /// What librdkafka reported meanwhile, if anything (` (…)`).
        detail: String,
    },
    /// The probe's thread ended abnormally.
    #[error("probing Kafka: {0}")]
    Probe(#[source] tokio::task::JoinError),
    /// A request about a topic (or a part of one) failed.
    #[error("{doing} {topic}: {source}{hint}")]
    Request {
        /// What was being done (`cannot read the offsets of`).
        doing: &'static str,
        /// The topic, with the partition and offset where they matter.
        topic: String,
        /// Kafka's error.
        #[source]
        source: Box<KafkaError>,
        /// The fix, if one is known (`; check kafka.bootstrap`).
        hint: &'static str,
    },
    /// Nothing arrived where records were expected.
    #[error(
        "reading {topic}[{partition}]: nothing arrived for 60 s at offset {offset} of {end}; is the broker up?"
    )]
    Stalled {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The next offset expected.
        offset: i64,
        /// Where the read was to end.
        end: i64,
    },
}

/// A failed request about `topic`.
fn request(
    doing: &'static str,
    topic: impl Into<String>,
    hint: &'static str,
) -> impl FnOnce(KafkaError) -> CaptureError {
    let topic = topic.into();
    move |source| CaptureError::Request {
        doing,
        topic,
        source: Box::new(source),
        hint,
    }
}

/// A client config with the brokers and the connection's security settings of `kafka`
/// (producer tuning does not apply to weir's readers and small control writes).
pub fn connection(kafka: &Kafka) -> Result<ClientConfig, CaptureError> {
    let mut c = ClientConfig::new();
    for (k, v) in kafka
        .connection_properties()
        .map_err(CaptureError::Settings)?
    {
        c.set(k, v);
    }
    Ok(c)
}

/// The last error librdkafka reported for a client (it reports failed logins and TLS
/// handshakes there, not to the request that was waiting).
#[derive(Clone, Default)]
struct LastError(
    std::sync::Arc<std::sync::Mutex<Option<(rdkafka::types::RDKafkaErrorCode, String)>>>,
);

impl rdkafka::producer::ProducerContext for LastError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.seen(code, reason);
        }
    }

    /// A failed TLS handshake reaches the log, not always the error callback.
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        if fac != "FAIL" {
            return;
        }
        if message.contains("SSL") {
            self.seen(Code::SSL, message);
        } else if message.contains("SASL") || message.contains("uthentication") {
            self.seen(Code::Authentication, message);
        }
    }
}

/// A failed login or TLS handshake: a cause start-up can name, unlike the generic
/// transport failures that follow it.
fn is_specific(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(code, Code::SSL | Code::Authentication)
}

impl LastError {
    fn seen(&self, code: rdkafka::types::RDKafkaErrorCode, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            // A specific cause is not overwritten by the generic failures that follow it.
            if last.as_ref().is_some_and(|(c, _)| is_specific(*c)) && !is_specific(code) {
                return;
            }
            *last = Some((code, reason.to_owned()));
        }
    }
}

/// Reach the brokers once (cluster metadata, at most 10 s), so that a refused login, a
/// failed TLS handshake or a wrong address stops start-up with its cause and the key to fix.
pub async fn probe(kafka: &Kafka) -> Result<(), CaptureError> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let config = connection(kafka)?;
    let bootstrap = kafka.bootstrap.clone();
    let seen = LastError::default();
    let ctx = seen.clone();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::producer::BaseProducer<LastError> = config
            .create_with_context(ctx)
            .map_err(|source| CaptureError::Client {
                what: "client",
                source: Box::new(source),
            })?;
        let start = Instant::now();
        // Failed attempts with a login or TLS cause: two make it the answer (one may be a
        // broker restarting mid-handshake). librdkafka may not repeat an identical error,
        // so an attempt with no news keeps the count.
        let (mut strikes, mut cause) = (0, None::<(Code, String)>);
        loop {
            use rdkafka::producer::Producer as _;
            let result = client.client().fetch_metadata(None, Duration::from_secs(1));
            // Serves the error callback.
            client.poll(Duration::ZERO);
            match seen.0.lock().ok().and_then(|mut l| l.take()) {
                Some((code, why)) if is_specific(code) => {
                    strikes += 1;
                    cause = Some((code, why));
                }
                Some(other) => {
                    strikes = 0;
                    cause = Some(other);
                }
                None => {}
            }
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            match &cause {
                Some((Code::Authentication, why)) if strikes >= 2 => {
                    return Err(CaptureError::Login(why.clone()));
                }
                Some((Code::SSL, why)) if strikes >= 2 => {
                    return Err(CaptureError::Tls(why.clone()));
                }
                _ if start.elapsed() >= Duration::from_secs(10) => {
                    let detail = cause
                        .map(|(_, why)| format!(" ({why})"))
                        .unwrap_or_default();
                    return Err(CaptureError::Unreachable {
                        bootstrap: bootstrap.clone(),
                        source: Box::new(e),
                        detail,
                    });
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(CaptureError::Probe)?
}

/// A consumer that only reads what it is assigned and commits only when told, in consumer
/// group `group` (a fresh one if none).
pub fn consumer(kafka: &Kafka, group: Option<&str>) -> Result<BaseConsumer, CaptureError> {
    let group = group.map_or_else(
        || format!("weir-reader-{}", rand::random::<u64>()),
        str::to_owned,
    );
    connection(kafka)?
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.message.max.bytes", "4194304")
        // Reads stop at a known end: a fetch parked at the end of a partition would only
        // delay the next assignment (the next pass, the next partition).
        .set("fetch.wait.max.ms", "20")
        .create()
        .map_err(|source| CaptureError::Client {
            what: "consumer",
            source: Box::new(source),
        })
}

/// A header's value as text.
pub fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    header_bytes(m, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A header's value, borrowed (for scans that look at every message).
pub fn header_bytes<'m>(m: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m [u8]> {
    m.headers()?
        .iter()
        .find(|x| x.key == name)
        .and_then(|x| x.value)
}

/// A message as weir captured it (raw capture or quarantine entry).
pub struct Captured {
    /// Where it was read.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// `weir.message.id` (`partition:offset` for records written before ids existed).
    pub id: String,
    /// The cohort that processed it, if it was routed.
    pub cohort: Option<String>,
    /// The sha256 of the version that processed it.
    pub sha256: Option<String>,
    /// It was a retained message.
    pub retained: bool,
    /// The message as the plugin saw it.
    pub message: Message,
}

/// Rebuild a captured message from its value and headers (read once, in one pass).
pub fn captured(m: &BorrowedMessage<'_>) -> Captured {
    let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
    let mut c = Captured {
        partition: m.partition(),
        offset: m.offset(),
        id: String::new(),
        cohort: None,
        sha256: None,
        retained: false,
        message: Message {
            payload: m.payload().unwrap_or_default().to_vec(),
            ..Message::default()
        },
    };
    let mut topic = None;
    if let Some(hs) = m.headers() {
        for x in hs.iter() {
            match x.key {
                h::MESSAGE_ID => c.id = text(x.value),
                h::COHORT => c.cohort = Some(text(x.value)),
                h::PLUGIN_SHA256 => c.sha256 = Some(text(x.value)),
                h::MQTT_RETAINED => c.retained = true,
                h::MQTT_TOPIC => topic = Some(text(x.value)),
                h::MQTT_CONTENT_TYPE => c.message.content_type = Some(text(x.value)),
                h::RECEIVED_AT => {
                    c.message.received_at_ms = text(x.value).parse().unwrap_or_default();
                }
                key => {
                    if let Some(name) = key.strip_prefix(h::USER_PROPERTY_PREFIX) {
                        c.message.properties.push((name.to_owned(), text(x.value)));
                    }
                }
            }
        }
    }
    if c.id.is_empty() {
        c.id = format!("{}:{}", m.partition(), m.offset());
    }
    c.message.topic = topic
        .or_else(|| m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
        .unwrap_or_default();
    c
}

/// Which records of a topic.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// One partition, or all.
    pub partition: Option<i32>,
    /// First offset (inclusive).
    pub start_offset: Option<i64>,
    /// Last offset (exclusive).
    pub end_offset: Option<i64>,
    /// Records at or after this time, ms since the Unix epoch.
    pub since_ms: Option<i64>,
    /// Records before this time.
    pub until_ms: Option<i64>,
}

/// `(partition, first offset, end offset)` of each non-empty part of a range.
pub type Bounds = Vec<(i32, i64, i64)>;

/// The parts of `topic` that `range` covers, as it stands now; empty if the topic does not
/// exist.
pub fn offsets(
    consumer: &BaseConsumer,
    topic: &str,
    range: &Range,
) -> Result<Bounds, CaptureError> {
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(request(
            "cannot read the metadata of",
            topic,
            "; check kafka.bootstrap",
        ))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let at_time = |ms: i64| -> Result<HashMap<i32, i64>, CaptureError> {
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                .map_err(request("cannot ask for offsets by time in", topic, ""))?;
        }
        let found = consumer.offsets_for_times(tpl, TIMEOUT).map_err(request(
            "cannot find offsets by time in",
            topic,
            "",
        ))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), o),
                _ => (e.partition(), i64::MAX),
            })
            .collect())
    };
    let since = range.since_ms.map(at_time).transpose()?;
    let until = range.until_ms.map(at_time).transpose()?;
    let mut out = Vec::new();
    for p in partitions {
        if range.partition.is_some_and(|want| want != p) {
            continue;
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .map_err(request(
                "cannot read the offsets of",
                format!("{topic}[{p}]"),
                "",
            ))?;
        let mut start = low.max(range.start_offset.unwrap_or(low));
        let mut end = high.min(range.end_offset.unwrap_or(high));
        if let Some(s) = since.as_ref().and_then(|m| m.get(&p)) {
            start = start.max(*s);
        }
        if let Some(u) = until.as_ref().and_then(|m| m.get(&p)) {
            end = end.min(*u);
        }
        if start < end {
            out.push((p, start, end));
        }
    }
    Ok(out)
}

/// Read each part of `bounds` in order, calling `f` on every record; an error from `f`
/// stops the read and is returned.
pub fn read<E: From<CaptureError>>(
    consumer: &BaseConsumer,
    topic: &str,
    bounds: &[(i32, i64, i64)],
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<(), E> {
    for &(p, start, end) in bounds {
        let mut tpl = TopicPartitionList::new();
        let part = || format!("{topic}[{p}]");
        tpl.add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(request("cannot start reading", part(), ""))?;
        consumer
            .assign(&tpl)
            .map_err(request("cannot start reading", part(), ""))?;
        let mut next = start;
        let mut idle = Instant::now();
        while next < end {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    idle = Instant::now();
                    if m.offset() < end {
                        f(&m)?;
                    }
                }
                Some(Err(e)) => {
                    let at = format!("{topic}[{p}] at offset {next}");
                    return Err(request("reading", at, "")(e).into());
                }
                None if idle.elapsed() > Duration::from_secs(60) => {
                    return Err(CaptureError::Stalled {
                        topic: topic.to_owned(),
                        partition: p,
                        offset: next,
                        end,
                    }
                    .into());
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Move each part of `bounds` past what consumer group of `consumer` recorded as done (see
/// [`record_progress`]), dropping parts already finished.
pub fn resume_from(
    consumer: &BaseConsumer,
    topic: &str,
    bounds: &mut Bounds,
) -> Result<(), CaptureError> {
    let mut tpl = TopicPartitionList::new();
    for (p, _, _) in bounds.iter() {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT).map_err(request(
        "cannot read the recorded progress in",
        topic,
        "",
    ))?;
    for e in committed.elements() {
        if let (Offset::Offset(o), Some(b)) = (
            e.offset(),
            bounds.iter_mut().find(|(p, _, _)| *p == e.partition()),
        ) {
            b.1 = b.1.max(o);
        }
    }
    bounds.retain(|(_, s, e)| s < e);
    Ok(())
}

/// Record in the consumer group that `topic` is done up to (exclusive) these offsets.
pub fn record_progress<'a>(
    consumer: &BaseConsumer,
    topic: &str,
    done_to: impl IntoIterator<Item = (&'a i32, &'a i64)>,
) -> Result<(), CaptureError> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in done_to {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(request("cannot record progress in", topic, ""))?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .map_err(request("cannot record progress in", topic, ""))
}
