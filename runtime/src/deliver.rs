//! Delivery: drives every message's Kafka writes to their end with the planning core
//! ([`weir_core::plan`]), and releases its MQTT ack in arrival order ([`weir_core::ack`]).
//!
//! One owner, no task or future per message: writes go out tagged, Kafka's answers come
//! back in bulk ([`Sink::answers`]) and are matched to their message by tag. When the last
//! write of a step is answered, the core says what next — done (the ack is released, with
//! every ack now unblocked behind it, in one hand-over to the source), write again after a
//! backoff, or quarantine instead.

use crate::metrics::{KindLabel, Metrics};
use crate::sink::{Answer, Sink, Tag};
use crate::source::{AckToken, Source};
use crate::transform::Outcome;
use prometheus_client::metrics::counter::Counter;
use slab::Slab;
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Instant;
use weir_core::ack::AckQueue;
use weir_core::plan::{Delivery, Input, Kind, Next, Settled, Topology};
use weir_core::untrusted::Untrusted;
use weir_core::write::{Failure, Write};

/// What the courier writes through: Kafka ([`Sink`]) in `weir run`; in tests, anything
/// that takes writes and lets the test answer them.
pub trait Writes {
    /// Enqueue `w` under `tag`; its answer comes back through [`Courier::answered`]. An
    /// error means it was not enqueued and no answer will come.
    fn send(
        &self,
        w: &Write,
        tag: Tag,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send;
}

/// Where released acknowledgements go: the MQTT session ([`Source`]) in `weir run`.
pub trait Acks {
    /// One message's acknowledgement.
    type Token: Arrived;
    /// Send these acknowledgements, in this order.
    fn ack(&self, tokens: Vec<Self::Token>);
}

/// A message's arrival time, for the age of the oldest one not yet acknowledged.
pub trait Arrived {
    /// When the message arrived.
    fn arrived(&self) -> Instant;
}

impl Writes for Sink {
    fn send(
        &self,
        w: &Write,
        tag: Tag,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send {
        Sink::send(self, w, tag)
    }
}

impl Acks for Source {
    type Token = AckToken;
    fn ack(&self, tokens: Vec<AckToken>) {
        Source::ack(self, tokens);
    }
}

impl Arrived for AckToken {
    fn arrived(&self) -> Instant {
        AckToken::arrived(self)
    }
}

/// One message of a transformed batch: its ack, the message, its cohort (if routed) and
/// its transform outcome (if transformed).
pub type Transformed<T> = (T, Input, Option<usize>, Option<Outcome>);

/// A transformed batch handed to delivery: per message its ack, the message, its cohort
/// and its transform outcome, planned against `topology`.
pub struct Work {
    /// The topology the batch was routed with.
    pub topology: Arc<Topology>,
    /// The messages, in arrival order.
    pub messages: Vec<Transformed<AckToken>>,
}

/// One message on its way: the step in progress and what Kafka has said of it.
struct Flight {
    seq: u64,
    delivery: Delivery,
    topology: Arc<Topology>,
    writes: Vec<(Kind, Write)>,
    /// Kafka's answer to each of `writes`, as it comes. Inline for the usual step of one
    /// or two writes (a record, and its raw capture): this is per message.
    results: SmallVec<[Option<Result<(), Failure>>; 2]>,
    /// Writes of this step not yet answered.
    left: usize,
    started: Instant,
    /// A quarantine write keeps failing (counted in `weir_stuck_writes`).
    stuck: bool,
}

/// A step waiting out a backoff: when, which flight, its writes.
type Retry = (tokio::time::Instant, usize, Vec<(Kind, Write)>);

/// The delivery driver of `weir run`: writes through `W`, acknowledges through `A`.
pub struct Courier<W = Sink, A: Acks = Source> {
    sink: W,
    source: A,
    metrics: Arc<Metrics>,
    acks: AckQueue<A::Token>,
    flights: Slab<Flight>,
    /// Write tag → (flight, index of the write in its step).
    tags: Slab<(usize, usize)>,
    /// Steps waiting out a backoff.
    retries: Vec<Retry>,
    /// Acks released and not yet handed to the source.
    ready: Vec<A::Token>,
    /// Records-published counters by cohort name (few cohorts: a short list).
    records: Vec<(String, Counter)>,
}

impl<W: Writes, A: Acks> Courier<W, A> {
    /// A driver writing through `sink` and acknowledging through `source`.
    pub fn new(sink: W, source: A, metrics: Arc<Metrics>) -> Courier<W, A> {
        Courier {
            sink,
            source,
            metrics,
            acks: AckQueue::default(),
            flights: Slab::new(),
            tags: Slab::new(),
            retries: Vec::new(),
            ready: Vec::new(),
            records: Vec::new(),
        }
    }

    /// A message taken in: its ack now waits behind every earlier one. Returns its
    /// sequence number.
    pub fn arrived(&mut self, token: A::Token) -> u64 {
        self.acks.arrived(token)
    }

    /// Take a transformed batch: each message's ack now waits behind every earlier one,
    /// its writes are planned against `topology` and started, and the acks released so
    /// far are handed to the source.
    ///
    /// The clock is read once for the batch: its messages' hand-over and their writes'
    /// start are timed from that reading (a reading per message cost more than the rest of
    /// the bookkeeping, and the batch is started within microseconds). A wait for room in
    /// librdkafka's queue so counts toward the produce time, as Kafka's backpressure.
    pub async fn take(&mut self, topology: &Arc<Topology>, batch: Vec<Transformed<A::Token>>) {
        let now = Instant::now();
        for (token, input, cohort, outcome) in batch {
            self.metrics
                .handover_seconds
                .observe(now.saturating_duration_since(token.arrived()));
            let seq = self.acks.arrived(token);
            let delivery = topology.plan(input, cohort, outcome);
            self.start(seq, delivery, Arc::clone(topology), now).await;
        }
        self.release();
    }

    /// Start delivering message `seq` (planned against `topology`) at `now`. Acks it
    /// releases are handed over by [`Courier::release`].
    pub async fn start(
        &mut self,
        seq: u64,
        mut delivery: Delivery,
        topology: Arc<Topology>,
        now: Instant,
    ) {
        let next = delivery.start();
        let key = self.flights.insert(Flight {
            seq,
            delivery,
            topology,
            writes: Vec::new(),
            results: SmallVec::new(),
            left: 0,
            started: now,
            stuck: false,
        });
        self.drive(key, next, now).await;
    }

    /// Take Kafka's answers (from [`Sink::answers`]); moves each message they complete a
    /// step of on.
    pub async fn answered(&mut self, answers: &mut Vec<Answer>) {
        let now = Instant::now();
        for a in answers.drain(..) {
            let Some((key, i)) = self.tags.try_remove(a.tag) else {
                continue;
            };
            let f = &mut self.flights[key];
            f.results[i] = Some(a.result);
            f.left -= 1;
            if f.left == 0 {
                let next = self.settle(key, now);
                self.drive(key, next, now).await;
            }
        }
        self.release();
    }

    /// Hand the acks released so far to the source, in one go.
    pub fn release(&mut self) {
        if !self.ready.is_empty() {
            let ready = std::mem::replace(&mut self.ready, Vec::with_capacity(256));
            self.source.ack(ready);
        }
    }

    /// When the next retry is due, if any waits.
    pub fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.retries.iter().map(|r| r.0).min()
    }

    /// Send the retries that are due.
    pub async fn retry_due(&mut self) {
        let now = tokio::time::Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| r.0 <= now);
        self.retries = wait;
        let now = now.into_std();
        for (_, key, writes) in due {
            if !self.send(key, writes, now).await {
                let next = self.settle(key, now);
                self.drive(key, next, now).await;
            }
        }
        self.release();
    }

    /// Messages started and not yet settled.
    pub fn in_progress(&self) -> usize {
        self.flights.len()
    }

    /// The arrival time of the oldest message not yet acknowledged.
    pub fn oldest(&self) -> Option<Instant> {
        self.acks.oldest().map(Arrived::arrived)
    }

    /// Follow the core's answers for one message until it waits on Kafka or a backoff,
    /// or is done; writes sent are timed from `now`.
    async fn drive(&mut self, key: usize, mut next: Next, now: Instant) {
        loop {
            match next {
                Next::Done(s) => {
                    self.done(key, s);
                    return;
                }
                Next::Send {
                    writes,
                    after,
                    stuck,
                } => {
                    self.mark_stuck(key, stuck);
                    if !after.is_zero() {
                        self.retries
                            .push((tokio::time::Instant::now() + after, key, writes));
                        return;
                    }
                    if self.send(key, writes, now).await {
                        return;
                    }
                    // Nothing could be enqueued: the core decides on the errors at once.
                    next = self.settle(key, now);
                }
            }
        }
    }

    /// Enqueue a step's writes, timed from `now`; false when none was enqueued (no answer
    /// will come).
    async fn send(&mut self, key: usize, writes: Vec<(Kind, Write)>, now: Instant) -> bool {
        let mut results = smallvec::smallvec![None; writes.len()];
        let mut left = 0;
        for (i, (_, w)) in writes.iter().enumerate() {
            let tag = self.tags.insert((key, i));
            match self.sink.send(w, tag).await {
                Ok(()) => left += 1,
                Err(e) => {
                    self.tags.remove(tag);
                    results[i] = Some(Err(e));
                }
            }
        }
        let f = &mut self.flights[key];
        f.writes = writes;
        f.results = results;
        f.left = left;
        f.started = now;
        left > 0
    }

    /// Every write of the step has its answer (by `now`): report failures, ask the core.
    fn settle(&mut self, key: usize, now: Instant) -> Next {
        let f = &mut self.flights[key];
        self.metrics
            .produce_seconds
            .observe(now.saturating_duration_since(f.started));
        let writes = std::mem::take(&mut f.writes);
        let results = std::mem::take(&mut f.results);
        let no_answer = || Failure::Transient("no answer from Kafka".into());
        for ((kind, w), r) in writes.iter().zip(&results) {
            let e = match r {
                Some(Ok(())) => continue,
                Some(Err(e)) => std::borrow::Cow::Borrowed(e),
                None => std::borrow::Cow::Owned(no_answer()),
            };
            let label = match kind {
                Kind::Raw => "raw",
                Kind::Record => "record",
                Kind::Quarantine => "quarantine",
            };
            self.metrics
                .write_retries
                .get_or_create(&KindLabel { kind: label.into() })
                .inc();
            if let Failure::Unauthorized(_) = *e {
                tracing::error!(kind = label, topic = %w.topic, mqtt_topic = %Untrusted(&f.delivery.input().message.topic), error = e.reason(), "Kafka does not let weir's principal write this topic; the message is held, unacknowledged, until it may: grant the principal WRITE (and DESCRIBE) on the topic, e.g. kafka-acls --add --allow-principal User:<weir's principal> --operation Write --operation Describe --topic <topic>");
            } else {
                tracing::error!(kind = label, topic = %w.topic, mqtt_topic = %Untrusted(&f.delivery.input().message.topic), error = e.reason(), "Kafka did not accept a write");
            }
        }
        // Handed to the core as they are taken from the step, with no list of their own.
        let settled = writes
            .into_iter()
            .zip(results)
            .map(|(w, r)| (w, r.unwrap_or_else(|| Err(no_answer()))));
        f.delivery.settle(&f.topology, settled)
    }

    fn mark_stuck(&mut self, key: usize, stuck: bool) {
        let f = &mut self.flights[key];
        if f.stuck == stuck {
            return;
        }
        if stuck {
            self.metrics.stuck_writes.inc();
            tracing::error!(mqtt_topic = %Untrusted(&f.delivery.input().message.topic), "a write keeps failing; the message stays unacknowledged and weir is not ready until Kafka takes it");
        } else {
            self.metrics.stuck_writes.dec();
        }
        f.stuck = stuck;
    }

    /// A message is settled: count it, and release every ack it unblocks.
    fn done(&mut self, key: usize, s: Settled) {
        let f = self.flights.remove(key);
        if f.stuck {
            self.metrics.stuck_writes.dec();
        }
        let cohort = s
            .cohort
            .map_or("-", |c| f.topology.cohorts[c].name.as_str());
        if s.records > 0 {
            let counter = match self.records.iter().find(|(c, _)| c == cohort) {
                Some((_, counter)) => counter,
                None => {
                    let counter = self.metrics.records_of(cohort);
                    self.records.push((cohort.to_owned(), counter));
                    &self.records[self.records.len() - 1].1
                }
            };
            counter.inc_by(s.records);
        }
        if s.uncaptured {
            self.metrics.raw_capture_refused.inc();
        }
        if let Some(code) = &s.quarantined {
            self.metrics.quarantine(cohort, code);
            if *code == weir_sdk::codes::Code::PayloadTooLarge {
                self.metrics.oversize.inc();
            }
        }
        self.acks.done(f.seq, &mut self.ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use weir_core::message::Message;
    use weir_core::plan::Input;

    /// Takes writes and keeps them; the test answers them.
    #[derive(Default)]
    struct Kafka {
        sent: Mutex<Vec<(Tag, Write)>>,
    }

    impl Writes for Arc<Kafka> {
        fn send(
            &self,
            w: &Write,
            tag: Tag,
        ) -> impl std::future::Future<Output = Result<(), Failure>> + Send {
            self.sent.lock().unwrap().push((tag, w.clone()));
            std::future::ready(Ok(()))
        }
    }

    impl Kafka {
        /// The tag of the last write of message `n` (its quarantine entry is keyed by its
        /// MQTT topic, `d/<n>`).
        fn tag_of(&self, n: u64) -> Tag {
            let key = format!("d/{n}").into_bytes();
            self.sent
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(_, w)| w.key.as_ref() == Some(&key))
                .map(|(t, _)| *t)
                .expect("message n was written")
        }

        fn writes(&self) -> usize {
            self.sent.lock().unwrap().len()
        }
    }

    /// A message's acknowledgement: its number.
    struct Token(u64, Instant);

    impl Arrived for Token {
        fn arrived(&self) -> Instant {
            self.1
        }
    }

    /// Collects the acknowledgements sent, in order.
    #[derive(Default)]
    struct Mqtt {
        acked: Mutex<Vec<u64>>,
    }

    impl Acks for Arc<Mqtt> {
        type Token = Token;
        fn ack(&self, tokens: Vec<Token>) {
            self.acked
                .lock()
                .unwrap()
                .extend(tokens.iter().map(|t| t.0));
        }
    }

    struct Bench {
        kafka: Arc<Kafka>,
        mqtt: Arc<Mqtt>,
        metrics: Arc<Metrics>,
        courier: Courier<Arc<Kafka>, Arc<Mqtt>>,
        topology: Arc<Topology>,
    }

    impl Bench {
        fn new() -> Bench {
            let (kafka, mqtt, metrics) = (Arc::default(), Arc::default(), Arc::default());
            Bench {
                courier: Courier::new(Arc::clone(&kafka), Arc::clone(&mqtt), Arc::clone(&metrics)),
                kafka,
                mqtt,
                metrics,
                topology: Arc::new(Topology {
                    cohorts: vec![],
                    rules: vec![],
                    quarantine_topic: "q".into(),
                    raw_topic: None,
                }),
            }
        }

        /// Message `n` arrives and is started: routed nowhere, its one write is a
        /// quarantine entry.
        async fn take(&mut self, n: u64) {
            let seq = self.courier.arrived(Token(n, Instant::now()));
            let input = Input {
                id: format!("m-{n}"),
                message: Message {
                    topic: format!("d/{n}"),
                    payload: b"{}".to_vec(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let delivery = self.topology.plan(input, None, None);
            self.courier
                .start(seq, delivery, self.topology.clone(), Instant::now())
                .await;
        }

        /// Kafka answers message `n`'s last write.
        async fn answer(&mut self, n: u64, result: Result<(), Failure>) {
            let tag = self.kafka.tag_of(n);
            let mut answers = vec![Answer { tag, result }];
            self.courier.answered(&mut answers).await;
        }

        fn acked(&self) -> Vec<u64> {
            self.mqtt.acked.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn acks_leave_in_arrival_order_whatever_order_kafka_answers_in() {
        let mut b = Bench::new();
        for n in 1..=3 {
            b.take(n).await;
        }
        assert_eq!(b.courier.in_progress(), 3);
        b.answer(3, Ok(())).await;
        assert_eq!(b.acked(), [] as [u64; 0], "3 waits behind 1 and 2");
        b.answer(1, Ok(())).await;
        assert_eq!(b.acked(), [1]);
        b.answer(2, Ok(())).await;
        assert_eq!(b.acked(), [1, 2, 3], "2 releases itself and 3");
        assert_eq!(b.courier.in_progress(), 0);
        assert!(b.courier.oldest().is_none());
    }

    #[tokio::test]
    async fn a_failing_write_is_retried_after_a_backoff_and_holds_its_ack() {
        let mut b = Bench::new();
        b.take(1).await;
        b.take(2).await;
        b.answer(2, Ok(())).await;
        b.answer(1, Err(Failure::Transient("broker down".into())))
            .await;
        // Written again only after a backoff, counted stuck meanwhile (weir is not ready).
        assert_eq!(b.kafka.writes(), 2);
        let due = b.courier.next_retry().expect("a retry waits");
        assert!(due > tokio::time::Instant::now());
        assert_eq!(b.metrics.stuck_writes.get(), 1);
        assert_eq!(
            b.acked(),
            [] as [u64; 0],
            "nothing acknowledged ahead of Kafka"
        );
        tokio::time::sleep_until(due).await;
        b.courier.retry_due().await;
        assert_eq!(b.kafka.writes(), 3, "the failed write went out again");
        b.answer(1, Ok(())).await;
        assert_eq!(b.acked(), [1, 2]);
        assert_eq!(b.metrics.stuck_writes.get(), 0);
        assert!(b.courier.next_retry().is_none());
    }

    #[tokio::test]
    async fn the_oldest_unacknowledged_message_is_the_first_still_waiting() {
        let mut b = Bench::new();
        b.take(1).await;
        let first = b.courier.oldest().unwrap();
        b.take(2).await;
        assert_eq!(b.courier.oldest(), Some(first));
        b.answer(1, Ok(())).await;
        assert!(b.courier.oldest().unwrap() >= first);
        b.answer(2, Ok(())).await;
        assert_eq!(b.courier.oldest(), None);
    }
}
