//! Delivery: drives every message's Kafka writes to their end with the planning core
//! ([`crate::plan`]), and releases its MQTT ack in arrival order ([`crate::ack`]).
//!
//! One owner, no task or future per message: writes go out tagged, Kafka's answers come
//! back in bulk ([`Sink::answers`]) and are matched to their message by tag. When the last
//! write of a step is answered, the core says what next — done (the ack is released, with
//! every ack now unblocked behind it, in one hand-over to the source), write again after a
//! backoff, or quarantine instead.

use crate::ack::AckQueue;
use crate::metrics::{KindLabel, Metrics};
use crate::plan::{Delivery, Kind, Next, Settled, Topology};
use crate::sink::{Answer, Failure, Sink, Write};
use crate::source::{AckToken, Source};
use prometheus_client::metrics::counter::Counter;
use slab::Slab;
use std::sync::Arc;
use std::time::Instant;

/// One message on its way: the step in progress and what Kafka has said of it.
struct Flight {
    seq: u64,
    delivery: Delivery,
    topology: Arc<Topology>,
    writes: Vec<(Kind, Write)>,
    results: Vec<Option<Result<(), Failure>>>,
    /// Writes of this step not yet answered.
    left: usize,
    started: Instant,
    /// A quarantine write keeps failing (counted in `weir_stuck_writes`).
    stuck: bool,
}

/// A step waiting out a backoff: when, which flight, its writes.
type Retry = (tokio::time::Instant, usize, Vec<(Kind, Write)>);

/// The delivery driver of `weir run`.
pub struct Courier {
    sink: Sink,
    source: Source,
    metrics: Arc<Metrics>,
    acks: AckQueue<AckToken>,
    flights: Slab<Flight>,
    /// Write tag → (flight, index of the write in its step).
    tags: Slab<(usize, usize)>,
    /// Steps waiting out a backoff.
    retries: Vec<Retry>,
    /// Acks released and not yet handed to the source.
    ready: Vec<AckToken>,
    /// Records-published counters by cohort name (few cohorts: a short list).
    records: Vec<(String, Counter)>,
}

impl Courier {
    /// A driver writing through `sink` and acknowledging through `source`.
    pub fn new(sink: Sink, source: Source, metrics: Arc<Metrics>) -> Courier {
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
    pub fn arrived(&mut self, token: AckToken) -> u64 {
        self.acks.arrived(token)
    }

    /// Start delivering message `seq` (planned against `topology`). Acks it releases are
    /// handed over by [`Courier::release`].
    pub async fn start(&mut self, seq: u64, mut delivery: Delivery, topology: Arc<Topology>) {
        let next = delivery.start();
        let key = self.flights.insert(Flight {
            seq,
            delivery,
            topology,
            writes: Vec::new(),
            results: Vec::new(),
            left: 0,
            started: Instant::now(),
            stuck: false,
        });
        self.drive(key, next).await;
    }

    /// Take Kafka's answers (from [`Sink::answers`]); moves each message they complete a
    /// step of on.
    pub async fn answered(&mut self, answers: &mut Vec<Answer>) {
        for a in answers.drain(..) {
            let Some((key, i)) = self.tags.try_remove(a.tag) else {
                continue;
            };
            let f = &mut self.flights[key];
            f.results[i] = Some(a.result);
            f.left -= 1;
            if f.left == 0 {
                let next = self.settle(key);
                self.drive(key, next).await;
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
        for (_, key, writes) in due {
            if !self.send(key, writes).await {
                let next = self.settle(key);
                self.drive(key, next).await;
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
        self.acks.oldest().map(AckToken::arrived)
    }

    /// Follow the core's answers for one message until it waits on Kafka or a backoff,
    /// or is done.
    async fn drive(&mut self, key: usize, mut next: Next) {
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
                    if self.send(key, writes).await {
                        return;
                    }
                    // Nothing could be enqueued: the core decides on the errors at once.
                    next = self.settle(key);
                }
            }
        }
    }

    /// Enqueue a step's writes; false when none was enqueued (no answer will come).
    async fn send(&mut self, key: usize, writes: Vec<(Kind, Write)>) -> bool {
        let mut results = vec![None; writes.len()];
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
        f.started = Instant::now();
        left > 0
    }

    /// Every write of the step has its answer: report failures, ask the core.
    fn settle(&mut self, key: usize) -> Next {
        let f = &mut self.flights[key];
        Metrics::observe(&self.metrics.produce_seconds, f.started.elapsed());
        let writes = std::mem::take(&mut f.writes);
        let results = std::mem::take(&mut f.results);
        let mut settled = Vec::with_capacity(writes.len());
        for ((kind, w), r) in writes.into_iter().zip(results) {
            let r = r.unwrap_or_else(|| Err(Failure::Transient("no answer from Kafka".into())));
            if let Err(e) = &r {
                let label = match kind {
                    Kind::Raw => "raw",
                    Kind::Record => "record",
                    Kind::Quarantine => "quarantine",
                };
                self.metrics
                    .write_retries
                    .get_or_create(&KindLabel { kind: label.into() })
                    .inc();
                if let Failure::Unauthorized(_) = e {
                    tracing::error!(kind = label, topic = %w.topic, mqtt_topic = %f.delivery.input().message.topic, error = e.reason(), "Kafka does not let weir's principal write this topic; the message is held, unacknowledged, until it may: grant the principal WRITE (and DESCRIBE) on the topic, e.g. kafka-acls --add --allow-principal User:<weir's principal> --operation Write --operation Describe --topic <topic>");
                } else {
                    tracing::error!(kind = label, topic = %w.topic, mqtt_topic = %f.delivery.input().message.topic, error = e.reason(), "Kafka did not accept a write");
                }
            }
            settled.push(((kind, w), r));
        }
        f.delivery.settle(&f.topology, settled)
    }

    fn mark_stuck(&mut self, key: usize, stuck: bool) {
        let f = &mut self.flights[key];
        if f.stuck == stuck {
            return;
        }
        if stuck {
            self.metrics.stuck_writes.inc();
            tracing::error!(mqtt_topic = %f.delivery.input().message.topic, "a write keeps failing; the message stays unacknowledged and weir is not ready until Kafka takes it");
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
        if let Some(code) = &s.quarantined {
            self.metrics.quarantine(cohort, code);
            if *code == weir_sdk::codes::Code::PayloadTooLarge {
                self.metrics.oversize.inc();
            }
        }
        self.acks.done(f.seq, &mut self.ready);
    }
}
