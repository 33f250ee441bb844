//! The planning core: every decision between a message's arrival and its acknowledgement,
//! with no I/O — which cohort takes it, which Kafka writes its outcome causes (records, its
//! quarantine entry, its raw capture), and, as Kafka answers, what happens next: acknowledge,
//! write again, or quarantine instead. Live ingestion drives it from MQTT; replay and redrive
//! will drive it from Kafka. Unit-tested without brokers, the way rumqttc keeps `MqttState`
//! free of network calls.
//!
//! The rules, per message:
//! - all its writes acknowledged → it is done (acknowledge it);
//! - a record (or raw capture) write failed for a reason that can pass → write it again;
//! - a record (or raw capture) write refused for good (too large, invalid, not authorised)
//!   → quarantine the message with code `sink.produce-failed` and
//!   `weir.error.records-published` = how many of its records Kafka has;
//! - its quarantine entry refused as too large → write it again with the payload cut to a
//!   prefix (marked in headers), then without user-property headers;
//! - its quarantine entry failing otherwise → write it again with backoff, forever, marked
//!   stuck (the message stays unacknowledged; weir is not ready and says why).

use crate::avro::AvroSchema;
use crate::frame;
use crate::headers as h;
use crate::message::{Message, OVERSIZE_PREFIX, Oversize};
use crate::outcome::Outcome;
use crate::route::{self, KeyTemplate, Rule};
use crate::write::{Failure, HeaderField, HeaderList, Headers, SharedHeaders, Write};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use weir_sdk::codes::{Code, Stage};

/// Longest `weir.error.message`, bytes.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// What the core needs to know about a cohort.
#[derive(Debug, Clone)]
pub struct CohortPlan {
    /// Name (`weir.cohort`).
    pub name: String,
    /// Governed topic (shared by every write to it).
    pub output_topic: Arc<str>,
    /// Kafka key template.
    pub key: KeyTemplate,
    /// Registry id of the plugin's schema.
    pub schema_id: u32,
    /// The plugin's schema (to read fields for `{field.NAME}` keys).
    pub schema: AvroSchema,
    /// `weir.plugin`, `weir.plugin.sha256`, `weir.cohort`.
    pub identity: SharedHeaders,
}

impl CohortPlan {
    /// One record as a write to the cohort's topic: keyed by the template, framed with the
    /// schema id, headed by the version's identity, the message's headers and the record's.
    fn record(&self, topic: &str, base: &SharedHeaders, r: crate::outcome::Record) -> Write {
        let key = self.key.render(topic, r.key.as_deref(), |field| {
            let v = self.schema.decode_to_json(&r.value).ok()?;
            match v.get(field)? {
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        });
        let mut headers = Headers::shared([self.identity.clone(), base.clone()]);
        for (k, v) in r.headers {
            headers.push((Cow::Owned(k), Bytes::from(v)));
        }
        Write {
            topic: self.output_topic.clone(),
            key: key.map(String::into_bytes),
            value: frame::frame(self.schema_id, r.value),
            headers,
        }
    }
}

/// Routing rules, cohorts and topics: everything a plan depends on. Immutable; a new
/// topology replaces the old one between batches.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Cohorts, in config order.
    pub cohorts: Vec<CohortPlan>,
    /// One rule per cohort, same order.
    pub rules: Vec<Rule>,
    /// Where failed messages go.
    pub quarantine_topic: Arc<str>,
    /// Raw capture topic, if any.
    pub raw_topic: Option<Arc<str>>,
}

/// A message as it arrived, with what the source learnt about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    /// The message's id (`weir.message.id` on every write of it).
    pub id: String,
    /// The message (for an oversize one the payload is a prefix).
    pub message: Message,
    /// A retained message.
    pub retained: bool,
    /// Set when the payload was too large to keep.
    pub oversize: Option<Oversize>,
}

/// What a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raw capture.
    Raw,
    /// A governed record.
    Record,
    /// The quarantine entry.
    Quarantine,
}

/// What the driver does next for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these writes (after waiting `after`) and report each result to
    /// [`Delivery::settle`]. `stuck` when a quarantine entry is being retried: the message
    /// cannot complete until Kafka takes it.
    Send {
        /// The writes.
        writes: Vec<(Kind, Write)>,
        /// Wait this long first.
        after: Duration,
        /// A quarantine write is failing.
        stuck: bool,
    },
    /// Every write acknowledged: acknowledge the message.
    Done(Settled),
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Its cohort.
    pub cohort: Option<usize>,
    /// Records Kafka has.
    pub records: u64,
    /// Its quarantine code, if it went to quarantine.
    pub quarantined: Option<Code>,
    /// Kafka refused its raw capture for good: the quarantine entry, which holds the
    /// original payload (or, if Kafka refused that as too large too, its prefix, size and
    /// sha256), stands in for it (counted, so it is never silent).
    pub uncaptured: bool,
}

/// One message's writes and what is known of them.
#[derive(Debug)]
pub struct Delivery {
    input: Input,
    cohort: Option<usize>,
    first: Vec<(Kind, Write)>,
    records_ok: u64,
    quarantined: Option<Code>,
    /// A record or raw write refused for good, not yet answered by a quarantine entry.
    refused: Option<String>,
    /// The quarantine entry has been acknowledged.
    quarantine_written: bool,
    /// The raw capture was refused for good.
    uncaptured: bool,
    /// The record writes of the round in flight, by their index among the message's
    /// records, in the order sent; `None` in the first round (0, 1, 2, ...). Allocated only
    /// when a round is retried.
    in_flight: Option<Vec<u32>>,
    /// Indices of records Kafka refused for good (allocated only when one is).
    refused_records: Vec<u32>,
    /// Times the quarantine entry was cut down for size.
    shrunk: u8,
    /// Consecutive retry rounds.
    attempts: u32,
}

/// Backoff before retry round `n` (from 1): 100 ms doubling to 10 s.
pub fn retry_backoff(n: u32) -> Duration {
    Duration::from_millis(
        100u64
            .saturating_mul(1 << n.saturating_sub(1).min(7))
            .min(10_000),
    )
}

impl Topology {
    /// The cohort a message belongs to: the first rule that matches.
    pub fn route(&self, m: &Message) -> Option<usize> {
        route::route(&self.rules, &m.topic, &m.properties)
    }

    /// The cohort a message belongs to among `cohorts` (one group's, ascending): the first
    /// of their rules that matches.
    pub fn route_among(&self, m: &Message, cohorts: &[usize]) -> Option<usize> {
        cohorts
            .iter()
            .copied()
            .find(|&i| self.rules[i].matches(&m.topic, &m.properties))
    }

    /// Plan a message's writes from its cohort and its transform outcome (`None` for a
    /// message that was not transformed: unrouted or oversize).
    pub fn plan(&self, input: Input, cohort: Option<usize>, outcome: Option<Outcome>) -> Delivery {
        let mut d = Delivery {
            input,
            cohort,
            first: Vec::new(),
            records_ok: 0,
            quarantined: None,
            refused: None,
            quarantine_written: false,
            uncaptured: false,
            in_flight: None,
            refused_records: Vec::new(),
            shrunk: 0,
            attempts: 0,
        };
        if let Some(oversize) = &d.input.oversize {
            let why = format!(
                "payload of {} bytes is larger than mqtt.max_message_bytes; the value holds its first {} bytes",
                oversize.size,
                d.input.message.payload.len()
            );
            d.quarantine(self, Code::PayloadTooLarge, &why, None);
            return d;
        }
        let base = message_headers(&d.input);
        if let Some(raw) = &self.raw_topic {
            let capture = self.raw_capture(raw, &d.input, cohort, &base);
            d.first.push((Kind::Raw, capture));
        }
        let Some(ci) = cohort else {
            let why = format!(
                "no cohort matches topic {:?} with these user properties",
                d.input.message.topic
            );
            d.quarantine(self, Code::RouteUnmatched, &why, None);
            return d;
        };
        match outcome {
            None | Some(Outcome::Skip) => {}
            Some(Outcome::Reject { code, reason }) => {
                let code = Code::rejected(&code).unwrap_or(Code::PluginContract);
                d.quarantine(self, code, &reason, None);
            }
            Some(Outcome::Fail { code, reason }) => d.quarantine(self, code, &reason, None),
            Some(Outcome::Emit(records)) => {
                let c = &self.cohorts[ci];
                d.first.reserve_exact(records.len());
                for r in records {
                    let write = c.record(&d.input.message.topic, &base, r);
                    d.first.push((Kind::Record, write));
                }
            }
        }
        d
    }

    /// The raw capture of a message: its payload keyed by its topic, with the cohort and
    /// version that processed it (so replay knows the version instead of inferring it).
    fn raw_capture(
        &self,
        raw: &Arc<str>,
        input: &Input,
        cohort: Option<usize>,
        base: &SharedHeaders,
    ) -> Write {
        let identity = cohort.map(|ci| self.cohorts[ci].identity.clone());
        let headers = Headers::shared(std::iter::once(base.clone()).chain(identity));
        Write {
            topic: raw.clone(),
            key: Some(input.message.topic.clone().into_bytes()),
            value: input.message.payload.clone(),
            headers,
        }
    }
}

/// Headers every write of a message carries: its id, MQTT topic, receive time, retained
/// flag, content type and user properties, built once as a list its writes share.
fn message_headers(input: &Input) -> SharedHeaders {
    let m = &input.message;
    // Room for the usual values: id, topic and a time of up to 20 digits.
    let mut list = HeaderList::with_capacity(input.id.len() + m.topic.len() + 20);
    list.push(h::MESSAGE_ID, input.id.as_bytes());
    list.push(h::MQTT_TOPIC, m.topic.as_bytes());
    list.push(
        h::RECEIVED_AT,
        itoa::Buffer::new().format(m.received_at_ms).as_bytes(),
    );
    if input.retained {
        list.push(h::MQTT_RETAINED, b"true");
    }
    if let Some(ct) = &m.content_type {
        list.push(h::MQTT_CONTENT_TYPE, ct.as_bytes());
    }
    for (k, v) in &m.properties {
        list.push(format!("{}{k}", h::USER_PROPERTY_PREFIX), v.as_bytes());
    }
    Arc::new(list)
}

/// Cut `s` to at most `max` bytes on a character boundary, marking the cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What one round of Kafka's answers leaves to do.
#[derive(Default)]
struct Round {
    /// Writes to send again.
    again: Vec<(Kind, Write)>,
    /// Which of the message's records those are.
    resent: Vec<u32>,
    /// Retried because weir is not allowed to write (or cannot write quarantine).
    stuck: bool,
}

impl Delivery {
    /// The input it was planned from.
    pub fn input(&self) -> &Input {
        &self.input
    }

    /// Add the quarantine entry to the first writes.
    fn quarantine(
        &mut self,
        topo: &Topology,
        code: Code,
        why: &str,
        records_published: Option<u64>,
    ) {
        let w = self.quarantine_write(topo, &code, why, records_published);
        self.quarantined = Some(code);
        self.first.push((Kind::Quarantine, w));
    }

    fn quarantine_write(
        &self,
        topo: &Topology,
        code: &Code,
        why: &str,
        records_published: Option<u64>,
    ) -> Write {
        let m = &self.input.message;
        let stage: Stage = code.stage();
        let mut headers: Vec<HeaderField> = vec![
            (
                h::ERROR_STAGE.into(),
                Bytes::copy_from_slice(stage.as_str().as_bytes()),
            ),
            (
                h::ERROR_CODE.into(),
                Bytes::copy_from_slice(code.as_str().as_bytes()),
            ),
            (
                h::ERROR_MESSAGE.into(),
                Bytes::from(clip(why, MAX_ERROR_MESSAGE)),
            ),
        ];
        if let Some(n) = records_published {
            headers.push((
                h::ERROR_RECORDS_PUBLISHED.into(),
                Bytes::from(n.to_string()),
            ));
            // Which records are missing, so that a redrive writes those and only those.
            let refused: Vec<String> = self.refused_records.iter().map(u32::to_string).collect();
            headers.push((
                h::ERROR_RECORDS_REFUSED.into(),
                Bytes::from(refused.join(",")),
            ));
        }
        if let Some(ci) = self.cohort {
            headers.extend(topo.cohorts[ci].identity.to_fields());
        }
        headers.extend(message_headers(&self.input).to_fields());
        if let Some(o) = &self.input.oversize {
            push_truncation(&mut headers, o.size, &o.sha256);
        }
        Write {
            topic: topo.quarantine_topic.clone(),
            key: Some(m.topic.clone().into_bytes()),
            value: m.payload.clone(),
            headers: headers.into(),
        }
    }

    /// The writes to start with, in order. Empty for a skipped message without raw
    /// capture: it is done at once.
    pub fn start(&mut self) -> Next {
        let writes = std::mem::take(&mut self.first);
        if writes.is_empty() {
            return Next::Done(self.settled());
        }
        Next::Send {
            writes,
            after: Duration::ZERO,
            stuck: false,
        }
    }

    fn settled(&self) -> Settled {
        Settled {
            cohort: self.cohort,
            records: self.records_ok,
            quarantined: self.quarantined.clone(),
            uncaptured: self.uncaptured,
        }
    }

    /// Kafka answered the writes last sent: decide what follows.
    pub fn settle(
        &mut self,
        topo: &Topology,
        results: impl IntoIterator<Item = ((Kind, Write), Result<(), Failure>)>,
    ) -> Next {
        let mut round = Round::default();
        // Which of the message's records each record result is (results come in the order
        // the writes were sent).
        let sent = self.in_flight.take();
        let mut nth = 0usize;
        for ((kind, w), r) in results {
            let index = (kind == Kind::Record).then(|| {
                let i = sent.as_ref().map_or(nth as u32, |v| v[nth]);
                nth += 1;
                i
            });
            self.answered(&mut round, (kind, w, index), r);
        }
        if !round.again.is_empty() {
            self.in_flight = Some(round.resent);
            self.attempts += 1;
            let after = if round.stuck || round.again.iter().any(|(k, _)| *k != Kind::Quarantine) {
                retry_backoff(self.attempts)
            } else {
                Duration::ZERO
            };
            return Next::Send {
                writes: round.again,
                after,
                stuck: round.stuck,
            };
        }
        self.attempts = 0;
        self.after_refusal(topo)
            .unwrap_or_else(|| Next::Done(self.settled()))
    }

    /// One write's answer: counted, sent again (`index`: which record it is), or the
    /// message marked refused.
    fn answered(
        &mut self,
        round: &mut Round,
        (kind, mut w, index): (Kind, Write, Option<u32>),
        r: Result<(), Failure>,
    ) {
        match (kind, r) {
            (Kind::Record, Ok(())) => self.records_ok += 1,
            (Kind::Quarantine, Ok(())) => self.quarantine_written = true,
            (Kind::Raw, Ok(())) => {}
            (Kind::Raw | Kind::Record, Err(Failure::Transient(_))) => {
                round.resent.extend(index);
                round.again.push((kind, w));
            }
            // Held until the operator grants the permission: retried with backoff and
            // reported stuck (weir is not ready), never quarantined as the message's
            // fault.
            (_, Err(Failure::Unauthorized(_))) => {
                round.stuck = true;
                round.resent.extend(index);
                round.again.push((kind, w));
            }
            (Kind::Raw | Kind::Record, Err(f)) => {
                self.uncaptured |= kind == Kind::Raw;
                self.refused_records.extend(index);
                let what = if kind == Kind::Raw {
                    "its raw capture"
                } else {
                    "one of its records"
                };
                self.refused.get_or_insert_with(|| {
                    format!("Kafka refused {what} for good: {}", f.reason())
                });
            }
            (Kind::Quarantine, Err(Failure::TooLarge(_))) if self.shrunk < 2 => {
                self.shrink(&mut w);
                round.again.push((kind, w));
            }
            (Kind::Quarantine, Err(_)) => {
                round.stuck = true;
                round.again.push((kind, w));
            }
        }
    }

    /// Once nothing is to be sent again: a write refused for good sends the message to
    /// quarantine, unless it is there already.
    fn after_refusal(&mut self, topo: &Topology) -> Option<Next> {
        let why = self.refused.take()?;
        if self.quarantine_written {
            tracing::error!(topic = %crate::untrusted::Untrusted(&self.input.message.topic), %why, "a write of an already quarantined message was refused; its quarantine entry holds the original payload");
            return None;
        }
        let code = Code::SinkProduceFailed;
        let w = self.quarantine_write(topo, &code, &why, Some(self.records_ok));
        self.quarantined = Some(code);
        Some(Next::Send {
            writes: vec![(Kind::Quarantine, w)],
            after: Duration::ZERO,
            stuck: false,
        })
    }

    /// Make a quarantine entry Kafka refused as too large smaller: first the payload to a
    /// prefix, then the user-property headers and the error message too.
    fn shrink(&mut self, w: &mut Write) {
        self.shrunk += 1;
        if self.shrunk == 1 && w.value.len() > OVERSIZE_PREFIX {
            if self.input.oversize.is_none() {
                let sha = hex::encode(Sha256::digest(&w.value));
                push_truncation(w.headers.to_mut(), w.value.len() as u64, &sha);
            }
            w.value.truncate(OVERSIZE_PREFIX);
            return;
        }
        self.shrunk = 2;
        w.value.truncate(OVERSIZE_PREFIX);
        let headers = w.headers.to_mut();
        headers.retain(|(k, _)| !k.starts_with(h::USER_PROPERTY_PREFIX));
        for (k, v) in headers.iter_mut() {
            if k == h::ERROR_MESSAGE {
                v.truncate(256);
            }
        }
        if !headers.iter().any(|(k, _)| k == h::PAYLOAD_TRUNCATED) {
            let sha = hex::encode(Sha256::digest(&self.input.message.payload));
            push_truncation(headers, self.input.message.payload.len() as u64, &sha);
        }
    }
}

fn push_truncation(headers: &mut Vec<HeaderField>, size: u64, sha256: &str) {
    headers.push((h::PAYLOAD_TRUNCATED.into(), Bytes::from_static(b"true")));
    headers.push((h::PAYLOAD_SIZE.into(), Bytes::from(size.to_string())));
    headers.push((
        h::PAYLOAD_SHA256.into(),
        Bytes::copy_from_slice(sha256.as_bytes()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Record;

    const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"string"}]}"#;

    fn topo(raw: bool) -> Topology {
        Topology {
            cohorts: vec![CohortPlan {
                name: "c".into(),
                output_topic: "out".into(),
                key: KeyTemplate::parse("{field.id}").unwrap(),
                schema_id: 7,
                schema: AvroSchema::parse(SCHEMA).unwrap(),
                identity: Arc::new(vec![(h::COHORT.into(), Bytes::from_static(b"c"))].into()),
            }],
            rules: vec![Rule {
                filter: "d/#".into(),
                properties: vec![],
            }],
            quarantine_topic: "q".into(),
            raw_topic: raw.then(|| "raw".into()),
        }
    }

    fn input(topic: &str, payload: &[u8]) -> Input {
        Input {
            id: "m-1".into(),
            message: Message {
                topic: topic.into(),
                payload: payload.to_vec(),
                properties: vec![("fw".into(), "2".into())],
                content_type: None,
                received_at_ms: 5,
            },
            retained: false,
            oversize: None,
        }
    }

    fn record(id: &str) -> Record {
        let schema = AvroSchema::parse(SCHEMA).unwrap();
        let mut value = Vec::new();
        schema
            .encode_json(&format!(r#"{{"id":"{id}"}}"#), usize::MAX, &mut value)
            .unwrap();
        Record {
            key: None,
            value,
            headers: vec![],
        }
    }

    fn header<'a>(w: &'a Write, name: &str) -> Option<&'a str> {
        w.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    fn sent(next: Next) -> Vec<(Kind, Write)> {
        match next {
            Next::Send { writes, .. } => writes,
            Next::Done(s) => panic!("expected writes, got done: {s:?}"),
        }
    }

    fn all_ok(writes: Vec<(Kind, Write)>) -> Vec<((Kind, Write), Result<(), Failure>)> {
        writes.into_iter().map(|w| (w, Ok(()))).collect()
    }

    #[test]
    fn every_write_of_a_message_carries_its_id_and_the_raw_capture_its_version() {
        let t = topo(true);
        let inp = input("d/1", b"{}");
        let ci = t.route(&inp.message);
        let mut d = t.plan(inp, ci, Some(Outcome::Emit(vec![record("a")])));
        let writes = sent(d.start());
        for (_, w) in &writes {
            assert_eq!(header(w, h::MESSAGE_ID), Some("m-1"));
            assert_eq!(header(w, h::MQTT_TOPIC), Some("d/1"));
            assert_eq!(header(w, h::RECEIVED_AT), Some("5"));
        }
        let (kind, raw) = &writes[0];
        assert_eq!(*kind, Kind::Raw);
        assert_eq!(
            header(raw, h::COHORT),
            Some("c"),
            "raw → cohort is recorded"
        );
        let mut rejected = t.plan(
            input("d/2", b"{}"),
            ci,
            Some(Outcome::Reject {
                code: "bad".into(),
                reason: "no".into(),
            }),
        );
        let writes = sent(rejected.start());
        let (kind, q) = writes.last().unwrap();
        assert_eq!(*kind, Kind::Quarantine);
        assert_eq!(header(q, h::MESSAGE_ID), Some("m-1"));
    }

    #[test]
    fn records_carry_identity_key_and_wire_format() {
        let t = topo(true);
        let inp = input("d/1", b"{}");
        let ci = t.route(&inp.message);
        assert_eq!(ci, Some(0));
        let mut d = t.plan(inp, ci, Some(Outcome::Emit(vec![record("a"), record("b")])));
        let writes = sent(d.start());
        let kinds: Vec<Kind> = writes.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [Kind::Raw, Kind::Record, Kind::Record]);
        let (_, r) = &writes[1];
        assert_eq!(&*r.topic, "out");
        assert_eq!(r.key.as_deref(), Some(&b"a"[..]));
        assert_eq!(&r.value[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(header(r, h::COHORT), Some("c"));
        assert_eq!(header(r, "mqtt.fw"), Some("2"));
        assert_eq!(header(r, h::MQTT_TOPIC), Some("d/1"));
        let next = d.settle(&t, all_ok(writes));
        assert_eq!(
            next,
            Next::Done(Settled {
                cohort: Some(0),
                records: 2,
                quarantined: None,
                uncaptured: false,
            })
        );
    }

    #[test]
    fn unrouted_rejected_and_failed_messages_are_quarantined_with_their_stage() {
        let t = topo(false);
        let cases = [
            (None, None, "route.unmatched", "route"),
            (
                Some(0),
                Some(Outcome::Reject {
                    code: "reading.bad".into(),
                    reason: "no".into(),
                }),
                "reading.bad",
                "transform",
            ),
            (
                Some(0),
                Some(Outcome::Fail {
                    code: Code::SchemaViolation,
                    reason: "x".into(),
                }),
                "schema.violation",
                "encode",
            ),
        ];
        for (ci, outcome, code, stage) in cases {
            let mut d = t.plan(input("x/1", b"payload"), ci, outcome);
            let writes = sent(d.start());
            assert_eq!(writes.len(), 1);
            let (kind, w) = &writes[0];
            assert_eq!(*kind, Kind::Quarantine);
            assert_eq!(&*w.topic, "q");
            assert_eq!(w.value, b"payload", "original payload, untouched");
            assert_eq!(header(w, h::ERROR_CODE), Some(code));
            assert_eq!(header(w, h::ERROR_STAGE), Some(stage));
            let Next::Done(s) = d.settle(&t, all_ok(writes)) else {
                panic!()
            };
            assert_eq!(s.quarantined.unwrap().as_str(), code);
        }
    }

    #[test]
    fn a_skip_without_raw_capture_is_done_at_once() {
        let t = topo(false);
        let mut d = t.plan(input("d/1", b"{}"), Some(0), Some(Outcome::Skip));
        assert!(matches!(d.start(), Next::Done(_)));
    }

    #[test]
    fn a_record_refused_for_good_quarantines_the_message_with_the_count_published() {
        let t = topo(false);
        let mut d = t.plan(
            input("d/1", b"{}"),
            Some(0),
            Some(Outcome::Emit(vec![record("a"), record("b"), record("c")])),
        );
        let writes = sent(d.start());
        let results: Vec<_> = writes
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let r = match i {
                    1 => Err(Failure::TooLarge("MessageSizeTooLarge".into())),
                    2 => Err(Failure::Transient("broker down".into())),
                    _ => Ok(()),
                };
                (w, r)
            })
            .collect();
        // The transient one is written again first.
        let Next::Send { writes, after, .. } = d.settle(&t, results) else {
            panic!()
        };
        assert_eq!(writes.len(), 1);
        assert!(after > Duration::ZERO);
        // Then the quarantine entry, counting the two records Kafka has.
        let writes = sent(d.settle(&t, all_ok(writes)));
        assert_eq!(writes.len(), 1);
        let (kind, q) = &writes[0];
        assert_eq!(*kind, Kind::Quarantine);
        assert_eq!(header(q, h::ERROR_CODE), Some("sink.produce-failed"));
        assert_eq!(header(q, h::ERROR_RECORDS_PUBLISHED), Some("2"));
        assert_eq!(header(q, h::ERROR_RECORDS_REFUSED), Some("1"));
        assert!(
            header(q, h::ERROR_MESSAGE)
                .unwrap()
                .contains("MessageSizeTooLarge")
        );
        let Next::Done(s) = d.settle(&t, all_ok(writes)) else {
            panic!()
        };
        assert_eq!(s.records, 2);
        assert_eq!(s.quarantined, Some(Code::SinkProduceFailed));

        // A record refused in a retry round is named by its place in the message.
        let mut d = t.plan(
            input("d/2", b"{}"),
            Some(0),
            Some(Outcome::Emit(vec![record("a"), record("b"), record("c")])),
        );
        let results: Vec<_> = sent(d.start())
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let r = match i {
                    0 => Err(Failure::Transient("broker down".into())),
                    _ => Ok(()),
                };
                (w, r)
            })
            .collect();
        let retried = sent(d.settle(&t, results));
        let refused = retried
            .into_iter()
            .map(|w| (w, Err(Failure::TooLarge("MessageSizeTooLarge".into()))))
            .collect::<Vec<_>>();
        let q = sent(d.settle(&t, refused));
        assert_eq!(header(&q[0].1, h::ERROR_RECORDS_PUBLISHED), Some("2"));
        assert_eq!(header(&q[0].1, h::ERROR_RECORDS_REFUSED), Some("0"));
    }

    #[test]
    fn a_raw_capture_refused_for_good_is_stood_in_for_by_the_quarantine_entry_and_counted() {
        let t = topo(true);
        let inp = input("d/1", b"{}");
        let ci = t.route(&inp.message);
        let failed = Outcome::Fail {
            code: Code::PluginTrap,
            reason: "boom".into(),
        };
        // Already quarantined when the raw capture is refused: done, flagged.
        let mut d = t.plan(inp, ci, Some(failed.clone()));
        let answers: Vec<_> = sent(d.start())
            .into_iter()
            .map(|(k, w)| {
                let r = match k {
                    Kind::Raw => Err(Failure::TooLarge("too big for raw".into())),
                    _ => Ok(()),
                };
                ((k, w), r)
            })
            .collect();
        let Next::Done(s) = d.settle(&t, answers) else {
            panic!("expected done")
        };
        assert!(s.uncaptured);
        assert_eq!(s.quarantined, Some(Code::PluginTrap));
        // Refused before any quarantine entry: the message is quarantined for it.
        let mut d = t.plan(
            input("d/2", br#"{"id":"x"}"#),
            ci,
            Some(Outcome::Emit(vec![record("x")])),
        );
        let answers: Vec<_> = sent(d.start())
            .into_iter()
            .map(|(k, w)| {
                let r = match k {
                    Kind::Raw => Err(Failure::Permanent("no".into())),
                    _ => Ok(()),
                };
                ((k, w), r)
            })
            .collect();
        let q = sent(d.settle(&t, answers));
        assert_eq!(q[0].0, Kind::Quarantine);
        assert!(
            header(&q[0].1, h::ERROR_MESSAGE)
                .unwrap()
                .contains("raw capture")
        );
        let Next::Done(s) = d.settle(&t, all_ok(q)) else {
            panic!("expected done")
        };
        assert!(s.uncaptured);
        assert_eq!(s.quarantined, Some(Code::SinkProduceFailed));
    }

    #[test]
    fn a_quarantine_entry_too_large_is_cut_down_then_retried_with_backoff() {
        let t = topo(false);
        let payload = vec![b'x'; 50_000];
        let mut d = t.plan(input("nowhere", &payload), None, None);
        let writes = sent(d.start());
        let too_large = |writes: Vec<(Kind, Write)>| {
            writes
                .into_iter()
                .map(|w| (w, Err(Failure::TooLarge("too large".into()))))
                .collect::<Vec<_>>()
        };
        let Next::Send {
            writes,
            after,
            stuck,
        } = d.settle(&t, too_large(writes))
        else {
            panic!()
        };
        assert_eq!((after, stuck), (Duration::ZERO, false));
        let q = &writes[0].1;
        assert_eq!(q.value.len(), OVERSIZE_PREFIX);
        assert_eq!(header(q, h::PAYLOAD_TRUNCATED), Some("true"));
        assert_eq!(header(q, h::PAYLOAD_SIZE), Some("50000"));
        assert_eq!(
            header(q, h::PAYLOAD_SHA256).unwrap(),
            hex::encode(Sha256::digest(&payload))
        );
        let Next::Send { writes, .. } = d.settle(&t, too_large(writes)) else {
            panic!()
        };
        assert_eq!(
            header(&writes[0].1, "mqtt.fw"),
            None,
            "user properties dropped"
        );
        // Still refused: now it is stuck and retried with growing backoff, never dropped.
        let mut last = Duration::ZERO;
        let mut writes = writes;
        for _ in 0..4 {
            let Next::Send {
                writes: w,
                after,
                stuck,
            } = d.settle(&t, too_large(writes))
            else {
                panic!()
            };
            assert!(stuck && after > last);
            last = after;
            writes = w;
        }
        assert!(matches!(d.settle(&t, all_ok(writes)), Next::Done(_)));
    }

    #[test]
    fn a_record_weir_may_not_write_is_held_not_quarantined() {
        let t = topo(false);
        let mut d = t.plan(
            input("d/1", b"{}"),
            Some(0),
            Some(Outcome::Emit(vec![record("a"), record("b")])),
        );
        let mut writes = sent(d.start());
        for _ in 0..20 {
            let results: Vec<_> = writes
                .into_iter()
                .enumerate()
                .map(|(i, w)| {
                    let r = if i == 0 {
                        Err(Failure::Unauthorized("TopicAuthorizationFailed".into()))
                    } else {
                        Ok(())
                    };
                    (w, r)
                })
                .collect();
            let Next::Send {
                writes: w,
                after,
                stuck,
            } = d.settle(&t, results)
            else {
                panic!("an unauthorised write must be held")
            };
            assert!(stuck, "reported stuck, so weir is not ready");
            assert!(after > Duration::ZERO && after <= Duration::from_secs(10));
            assert!(
                w.iter().all(|(k, _)| *k == Kind::Record),
                "no quarantine entry"
            );
            writes = w;
        }
        // Granted: the held record is written, the message is done and nothing quarantined.
        let Next::Done(s) = d.settle(&t, all_ok(writes)) else {
            panic!()
        };
        assert_eq!(s.quarantined, None);
    }

    #[test]
    fn a_failing_quarantine_write_is_retried_until_it_succeeds() {
        let t = topo(false);
        let mut d = t.plan(input("nowhere", b"p"), None, None);
        let mut writes = sent(d.start());
        for _ in 0..20 {
            let results = writes
                .into_iter()
                .map(|w| (w, Err(Failure::Permanent("InvalidRecord".into()))))
                .collect::<Vec<_>>();
            let Next::Send {
                writes: w,
                after,
                stuck,
            } = d.settle(&t, results)
            else {
                panic!()
            };
            assert!(stuck && after <= Duration::from_secs(10));
            writes = w;
        }
        assert_eq!(writes[0].1.value, b"p", "the entry itself is unchanged");
        assert!(matches!(d.settle(&t, all_ok(writes)), Next::Done(_)));
    }

    #[test]
    fn oversize_messages_go_to_quarantine_with_size_and_digest() {
        let t = topo(true);
        let mut inp = input("d/1", &[1u8; OVERSIZE_PREFIX]);
        inp.oversize = Some(Oversize {
            size: 5_000_000,
            sha256: "ab".repeat(32),
        });
        let ci = t.route(&inp.message);
        let mut d = t.plan(inp, ci, None);
        let writes = sent(d.start());
        assert_eq!(writes.len(), 1, "no raw capture of a truncated payload");
        let q = &writes[0].1;
        assert_eq!(header(q, h::ERROR_CODE), Some("payload.too-large"));
        assert_eq!(header(q, h::ERROR_STAGE), Some("source"));
        assert_eq!(header(q, h::PAYLOAD_SIZE), Some("5000000"));
        assert_eq!(header(q, h::COHORT), Some("c"));
    }

    #[test]
    fn malformed_plugin_codes_become_contract_failures_and_messages_are_clipped() {
        let t = topo(false);
        let mut d = t.plan(
            input("d/1", b"{}"),
            Some(0),
            Some(Outcome::Reject {
                code: "Bad Code!".into(),
                reason: "é".repeat(5000),
            }),
        );
        let writes = sent(d.start());
        let q = &writes[0].1;
        assert_eq!(header(q, h::ERROR_CODE), Some("plugin.contract"));
        assert!(header(q, h::ERROR_MESSAGE).unwrap().len() <= MAX_ERROR_MESSAGE);
    }
}
