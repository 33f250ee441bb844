//! Exactly once for QoS 2: an exactly-once group's delivery, in Kafka transactions.
//!
//! Each MQTT session of the group (one, or one per scale-out slot) has a transactional
//! producer whose `transactional.id` is `weir.<session's client id>`. Whoever opens the
//! session initialises that id, which fences any earlier holder (a crashed, paused or
//! partitioned process) and aborts its open transaction; then it reads the session's state,
//! the QoS 2 packet ids committed and not yet released, from partition `slot` of the
//! topic `weir.sessions.<client_id>` (read committed), before the session connects.
//!
//! A batch of the session's messages is written in one transaction: every message's
//! writes, as the planning core decides them, and the session's new state. PUBREC (and
//! PUBACK for QoS 1) leave in arrival order only after the commit. A redelivery of a
//! committed id is answered and not written again ([`AckToken::duplicate`]); a PUBREL
//! takes the id out of the state, and its PUBCOMP leaves only after a commit says so (the
//! broker may reuse the id after PUBCOMP).
//!
//! A write Kafka refuses inside a transaction aborts it. The core still decides what the
//! refusal means for its message (write again, quarantine instead, a smaller entry); the
//! next attempt writes everything again: what had succeeded, and each message's next step.

use crate::config::Kafka;
use crate::deliver::{Transformed, Work};
use crate::metrics::Metrics;
use crate::sink::{Answer, Sink, TxnError};
use crate::source::{AckToken, OpenError, Source, Transactional};
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use weir_core::plan::{Kind, Next, Settled, Topology};
use weir_core::write::{Failure, Write};

/// Longest wait for a transaction call (init, commit, abort) before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long PUBRELs wait for a batch to ride along with before a transaction of their own
/// takes their ids out of the state.
const RELEASE_WAIT: Duration = Duration::from_millis(20);
/// The state's encoding version.
const FORMAT: u32 = 1;
/// Most messages in one transaction: batches waiting when one is taken ride along, up to
/// this many, so that a commit's round trip is paid once for all of them.
const MOST_PER_TRANSACTION: usize = 2_000;

/// A message to write, with the topology its batch was routed against.
type Taken<T> = (Arc<Topology>, Transformed<T>);

/// A session's state as its partition of the sessions topic keeps it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Encoding version.
    pub format: u32,
    /// QoS 2 packet ids committed to Kafka and not yet released by the broker.
    pub committed: BTreeSet<u16>,
}

impl State {
    /// The state after a transaction that forgets `released` ids and commits `new` ones.
    /// In that order: a broker may reuse an id for a new message right after its PUBREL, so
    /// an id both released and new in one transaction is the new message's, committed.
    pub fn next(&self, new: impl IntoIterator<Item = u16>, released: &[u16]) -> State {
        let mut committed = self.committed.clone();
        for id in released {
            committed.remove(id);
        }
        committed.extend(new);
        State {
            format: FORMAT,
            committed,
        }
    }

    /// A record's value; an empty or newer-format value is refused (weir stops rather than
    /// guess which ids are committed).
    pub fn decode(value: &[u8]) -> Result<State, StateError> {
        let s: State = serde_json::from_slice(value).map_err(StateError::Invalid)?;
        if s.format > FORMAT {
            return Err(StateError::Newer(s.format));
        }
        Ok(s)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A session's state record that this weir cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not a state weir wrote.
    #[error("not a session state: {0}")]
    Invalid(#[source] serde_json::Error),
    /// Written by a newer weir.
    #[error("format {0} is newer than this weir's ({FORMAT})")]
    Newer(u32),
}

/// The sessions topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionsTopicError {
    /// Kafka's settings cannot be used.
    #[error(transparent)]
    Settings(#[from] crate::capture::CaptureError),
    /// The topic cannot be created or found.
    #[error("the exactly-once sessions topic: {0}")]
    Topic(#[from] crate::topics::TopicError),
    /// An existing topic has fewer partitions than the group has slots.
    #[error(
        "the sessions topic {topic:?} has {found} partitions, fewer than the {partitions} slots: add partitions to it (kafka-topics --alter --partitions {partitions})"
    )]
    TooFewPartitions {
        /// The topic.
        topic: String,
        /// Its partitions.
        found: usize,
        /// The slots.
        partitions: i32,
    },
}

/// One exactly-once session's Kafka side.
struct SessionTx {
    client_id: String,
    partition: i32,
    sink: Sink,
    state: Mutex<State>,
    /// The first tag of the next attempt: each attempt's writes have tags of their own, so
    /// a late answer to an aborted attempt (librdkafka purges its writes) is not taken for
    /// one of the next attempt's.
    tags: std::sync::atomic::AtomicUsize,
}

/// A PUBREL taken (session, connection, packet id), waiting for the commit that forgets
/// its id.
pub type Released = (Option<u16>, u64, u16);

struct Inner {
    kafka: Kafka,
    /// The group's client id (sessions are it, or `<it>-<slot>`).
    client_id: String,
    slotted: bool,
    topic: String,
    sessions: Mutex<HashMap<Option<u16>, Arc<SessionTx>>>,
    released: mpsc::UnboundedSender<Released>,
}

/// The Kafka side of an exactly-once group's sessions; [`Transactions::deliver`] is its
/// delivery task.
#[derive(Clone)]
pub struct Transactions {
    inner: Arc<Inner>,
}

impl Transactions {
    /// The group whose client id is `client_id` (`slots`: its slot count, if any). Creates
    /// the sessions topic (compacted, a partition per slot) if missing. Returns the
    /// receiver of PUBRELs for [`Transactions::deliver`].
    pub async fn new(
        kafka: &Kafka,
        client_id: &str,
        slots: Option<u16>,
    ) -> Result<(Transactions, mpsc::UnboundedReceiver<Released>), SessionsTopicError> {
        let topic = crate::config::sessions_topic(client_id);
        ensure_topic(kafka, &topic, i32::from(slots.unwrap_or(1))).await?;
        let (released, rx) = mpsc::unbounded_channel();
        Ok((
            Transactions {
                inner: Arc::new(Inner {
                    kafka: kafka.clone(),
                    client_id: client_id.to_owned(),
                    slotted: slots.is_some(),
                    topic,
                    sessions: Mutex::new(HashMap::new()),
                    released,
                }),
            },
            rx,
        ))
    }

    fn session(&self, slot: Option<u16>) -> Option<Arc<SessionTx>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .cloned()
    }

    /// Fence earlier holders of the session's transactional id and read its state.
    fn open_blocking(inner: &Inner, slot: Option<u16>) -> Result<SessionTx, OpenError> {
        let client_id = match slot {
            Some(k) => crate::source::slot_client_id(&inner.client_id, k),
            None => inner.client_id.clone(),
        };
        let txid = format!("weir.{client_id}");
        let fatal = |why: String| OpenError { why, fatal: true };
        let sink = Sink::transactional(&inner.kafka, &format!("session {client_id:?}"), &txid)
            .map_err(|e| fatal(e.to_string()))?;
        sink.init_transactions(CALL_TIMEOUT).map_err(|e| match e {
            TxnError::Fatal(why) => fatal(format!(
                "Kafka refused the transactional id {txid:?}: {why}; exactly_once needs brokers with transactions and weir's principal allowed WRITE and DESCRIBE on that transactional id (kafka-acls --add --allow-principal User:<weir's principal> --operation Write --operation Describe --transactional-id {txid}), or set exactly_once = false"
            )),
            other => OpenError {
                why: format!(
                    "Kafka did not make this process the holder of the transactional id {txid:?} yet: {other} (a single broker needs transaction.state.log.replication.factor=1 and transaction.state.log.min.isr=1)"
                ),
                fatal: false,
            },
        })?;
        let partition = i32::from(slot.unwrap_or(0));
        let state = read_state(&inner.kafka, &inner.topic, partition, &client_id)?;
        Ok(SessionTx {
            client_id,
            partition,
            sink,
            state: Mutex::new(state),
            tags: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The delivery task of an exactly-once group: each batch handed over is written, per
    /// session, in one transaction with the session's state, then acknowledged; PUBRELs
    /// are forgotten in the next transaction (or one of their own), then completed.
    pub async fn deliver(
        self,
        source: Source,
        metrics: Arc<Metrics>,
        mut work: mpsc::Receiver<Work>,
        mut released: mpsc::UnboundedReceiver<Released>,
    ) {
        let mut pending: HashMap<Option<u16>, Vec<(u64, u16)>> = HashMap::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                w = work.recv() => {
                    let Some(w) = w else { break };
                    let mut taken: Vec<Taken<AckToken>> = Vec::new();
                    let mut next = Some(w);
                    while let Some(w) = next.take() {
                        taken.extend(w.messages.into_iter().map(|m| (w.topology.clone(), m)));
                        if taken.len() < MOST_PER_TRANSACTION {
                            next = work.try_recv().ok();
                        }
                    }
                    while let Ok((slot, n, id)) = released.try_recv() {
                        pending.entry(slot).or_default().push((n, id));
                    }
                    for (slot, messages) in by_session(taken) {
                        let releases = pending.remove(&slot).unwrap_or_default();
                        self.commit(&source, &metrics, slot, messages, releases).await;
                    }
                }
                r = released.recv() => {
                    let Some((slot, n, id)) = r else { break };
                    pending.entry(slot).or_default().push((n, id));
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + RELEASE_WAIT);
                }
                () = sleep_until(flush_at) => {
                    flush_at = None;
                    for (slot, releases) in std::mem::take(&mut pending) {
                        self.commit(&source, &metrics, slot, Vec::new(), releases).await;
                    }
                }
            }
        }
    }

    /// Write one session's share of a batch, and forget `releases`, in one transaction;
    /// acknowledge and complete once it committed.
    async fn commit(
        &self,
        source: &Source,
        metrics: &Metrics,
        slot: Option<u16>,
        messages: Vec<Taken<AckToken>>,
        releases: Vec<(u64, u16)>,
    ) {
        let Some(session) = self.session(slot) else {
            // The session ended here: what it held goes to its next holder, unacknowledged.
            return;
        };
        let started = std::time::Instant::now();
        for (_, (token, ..)) in &messages {
            metrics.handover_seconds.observe(started - token.arrived());
        }
        let mut batch = Batch::plan(messages);
        let released: Vec<u16> = releases.iter().map(|(_, id)| *id).collect();
        let mut attempt = 0u32;
        loop {
            let outcome = attempt_once(&session, &self.inner.topic, &mut batch, &released).await;
            match outcome {
                Ok(()) => break,
                Err(TxnError::Fatal(why)) => {
                    tracing::error!(session = %session.client_id, error = %why, "exactly once: this process can no longer write the session's transactions (another process holds it now); its unacknowledged messages go to that process");
                    metrics.transactions_aborted.inc();
                    self.give_up(source, slot, why).await;
                    return;
                }
                Err(TxnError::Retry(why) | TxnError::Abort(why)) => {
                    metrics.transactions_aborted.inc();
                    attempt += 1;
                    let wait = batch
                        .wait
                        .max(weir_core::plan::retry_backoff(attempt.min(8)));
                    tracing::warn!(session = %session.client_id, error = %why, retry_in = ?wait, "exactly once: transaction aborted; writing it again");
                    let sink = session.sink.clone();
                    let aborted =
                        tokio::task::spawn_blocking(move || sink.abort_transaction(CALL_TIMEOUT))
                            .await
                            .unwrap_or_else(|e| Err(TxnError::Abort(e.to_string())));
                    if let Err(TxnError::Fatal(why)) = aborted {
                        self.give_up(source, slot, why).await;
                        return;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        metrics.transactions_committed.inc();
        let took = started.elapsed();
        for _ in 0..batch.items.len() {
            metrics.produce_seconds.observe(took);
        }
        for (topology, s) in batch.settled() {
            count(metrics, topology, s);
        }
        let duplicates = batch.items.iter().filter(|i| i.delivery.is_none()).count();
        metrics.duplicates_answered.inc_by(duplicates as u64);
        let mut completed: Vec<(u64, Vec<u16>)> = Vec::new();
        for (n, id) in releases {
            match completed.iter_mut().find(|(c, _)| *c == n) {
                Some((_, ids)) => ids.push(id),
                None => completed.push((n, vec![id])),
            }
        }
        source.ack(batch.tokens());
        for (n, ids) in completed {
            source.complete(slot, n, ids);
        }
    }

    /// The session's transactions are another process's now (or its producer failed for
    /// good): drop it here. A slot goes (Kafka's group moves it); the only session of a
    /// deployment without slots stops weir, so its supervisor restarts it.
    async fn give_up(&self, source: &Source, slot: Option<u16>, why: String) {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
        match slot {
            Some(k) if self.inner.slotted => source.lose_slot(k).await,
            _ => source.fail(format!(
                "exactly once: the session's Kafka producer can write no more ({why}); another weir process may hold its transactional id"
            )),
        }
    }
}

impl Transactional for Transactions {
    fn open(&self, slot: Option<u16>) -> BoxFuture<'static, Result<Vec<u16>, OpenError>> {
        let this = self.clone();
        Box::pin(async move {
            let inner = this.inner.clone();
            let opened =
                tokio::task::spawn_blocking(move || Transactions::open_blocking(&inner, slot))
                    .await
                    .map_err(|e| OpenError {
                        why: e.to_string(),
                        fatal: false,
                    })??;
            let committed: Vec<u16> = opened
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .committed
                .iter()
                .copied()
                .collect();
            this.inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(slot, Arc::new(opened));
            Ok(committed)
        })
    }

    fn released(&self, slot: Option<u16>, connection: u64, pkid: u16) {
        let _ = self.inner.released.send((slot, connection, pkid));
    }

    fn closed(&self, slot: Option<u16>) {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
    }
}

/// Split a batch by the session each message came from, keeping arrival order in each.
fn by_session(messages: Vec<Taken<AckToken>>) -> Vec<(Option<u16>, Vec<Taken<AckToken>>)> {
    let mut out: Vec<(Option<u16>, Vec<Taken<AckToken>>)> = Vec::new();
    for m in messages {
        let slot = m.1.0.slot();
        match out.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, v)) => v.push(m),
            None => out.push((slot, vec![m])),
        }
    }
    out
}

/// One message of a transaction: what Kafka has taken of it so far (written again in
/// every attempt until one commits), the step the core wants next, and how it ended.
struct Item<T> {
    token: T,
    topology: Arc<Topology>,
    /// The QoS 2 packet id this message commits (none for a duplicate or QoS 0/1).
    commits: Option<u16>,
    delivery: Option<weir_core::plan::Delivery>,
    taken: Vec<Write>,
    step: Vec<(Kind, Write)>,
    settled: Option<Settled>,
}

/// A session's share of a batch, as the core plans it.
struct Batch<T> {
    items: Vec<Item<T>>,
    /// The longest backoff the core asked for in the last attempt.
    wait: Duration,
}

/// What a token tells the transaction about its message.
trait Arrival {
    fn commits(&self) -> Option<u16>;
    fn duplicate(&self) -> bool;
}

impl Arrival for AckToken {
    fn commits(&self) -> Option<u16> {
        (self.qos() == 2 && !AckToken::duplicate(self)).then(|| self.pkid())
    }
    fn duplicate(&self) -> bool {
        AckToken::duplicate(self)
    }
}

impl<T: Arrival> Batch<T> {
    fn plan(messages: Vec<Taken<T>>) -> Batch<T> {
        let items = messages
            .into_iter()
            .map(|(topology, (token, input, cohort, outcome))| {
                let commits = token.commits();
                if token.duplicate() {
                    // In Kafka already: nothing to write, it is answered in its turn.
                    return Item {
                        token,
                        topology,
                        commits,
                        delivery: None,
                        taken: Vec::new(),
                        step: Vec::new(),
                        settled: None,
                    };
                }
                let mut delivery = topology.plan(input, cohort, outcome);
                let (step, settled) = match delivery.start() {
                    Next::Send { writes, .. } => (writes, None),
                    Next::Done(s) => (Vec::new(), Some(s)),
                };
                Item {
                    token,
                    topology,
                    commits,
                    delivery: Some(delivery),
                    taken: Vec::new(),
                    step,
                    settled,
                }
            })
            .collect();
        Batch {
            items,
            wait: Duration::ZERO,
        }
    }

    /// Every write of an attempt, with its place: (item, `None` for one Kafka took before,
    /// or its index in the item's step).
    fn writes(&self) -> Vec<(usize, Option<usize>, &Write)> {
        let mut out = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            out.extend(item.taken.iter().map(|w| (i, None, w)));
            out.extend(
                item.step
                    .iter()
                    .enumerate()
                    .map(|(j, (_, w))| (i, Some(j), w)),
            );
        }
        out
    }

    /// The QoS 2 ids this batch commits.
    fn commits(&self) -> impl Iterator<Item = u16> + '_ {
        self.items.iter().filter_map(|i| i.commits)
    }

    /// Kafka's answers to an attempt's steps (`results[i][j]`: item i's step write j): each
    /// step goes to the core, which says what is next. True when every message is done.
    fn settle(&mut self, mut results: Vec<Vec<Option<Result<(), Failure>>>>) -> bool {
        let mut done = true;
        self.wait = Duration::ZERO;
        for (item, results) in self.items.iter_mut().zip(results.iter_mut()) {
            let Some(delivery) = &mut item.delivery else {
                continue;
            };
            if item.step.is_empty() {
                continue;
            }
            let step = std::mem::take(&mut item.step);
            let mut answered = Vec::with_capacity(step.len());
            for ((kind, w), r) in step.into_iter().zip(results.drain(..)) {
                let r = r.unwrap_or_else(|| Err(Failure::Transient("no answer from Kafka".into())));
                if r.is_ok() {
                    item.taken.push(w.clone());
                }
                answered.push(((kind, w), r));
            }
            match delivery.settle(&item.topology, answered) {
                Next::Done(s) => item.settled = Some(s),
                Next::Send { writes, after, .. } => {
                    item.step = writes;
                    self.wait = self.wait.max(after);
                    done = false;
                }
            }
        }
        done
    }

    fn settled(&self) -> impl Iterator<Item = (&Topology, &Settled)> {
        self.items
            .iter()
            .filter_map(|i| Some((&*i.topology, i.settled.as_ref()?)))
    }

    fn tokens(self) -> Vec<T> {
        self.items.into_iter().map(|i| i.token).collect()
    }
}

/// One attempt at a session's transaction: begin, write everything and the state, and
/// commit when Kafka took it all. The caller aborts on an error other than `Fatal`.
async fn attempt_once(
    session: &SessionTx,
    topic: &str,
    batch: &mut Batch<AckToken>,
    released: &[u16],
) -> Result<(), TxnError> {
    let sink = session.sink.clone();
    tokio::task::spawn_blocking(move || sink.begin_transaction())
        .await
        .map_err(|e| TxnError::Abort(e.to_string()))??;
    let (next, changed) = {
        let state = session.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = state.next(batch.commits(), released);
        let changed = next.committed != state.committed;
        (next, changed)
    };
    let writes = batch.writes();
    let mut sent = Sent::new(batch, session, writes.len());
    for (k, (i, j, w)) in writes.into_iter().enumerate() {
        let result = session.sink.send(w, sent.tag(k)).await;
        sent.place((i, j));
        sent.sent(result, Some((i, j)));
    }
    // A transaction of QoS 1 messages only leaves the state as it was.
    if changed {
        let state = Write {
            topic: topic.into(),
            key: Some(session.client_id.clone().into_bytes()),
            value: next.encode(),
            headers: Default::default(),
        };
        let tag = sent.tag(sent.places.len());
        let result = session
            .sink
            .send_to(&state, Some(session.partition), tag)
            .await;
        sent.sent(result, None);
    }
    sent.answered(&session.sink).await?;
    let done = batch.settle(sent.results);
    if let Some(why) = sent.failed {
        return Err(TxnError::Abort(format!("Kafka refused a write: {why}")));
    }
    if !done {
        return Err(TxnError::Abort("a message has more to write".into()));
    }
    commit(session).await?;
    *session.state.lock().unwrap_or_else(|p| p.into_inner()) = next;
    Ok(())
}

/// An attempt's writes on their way: each one's answer by its place in the batch, and the
/// first refusal.
struct Sent {
    /// The first tag of the attempt: writes `k` has tag `base + k`, the state the last.
    base: usize,
    /// Each write's (message, step) in the batch.
    places: Vec<(usize, Option<usize>)>,
    results: Vec<Vec<Option<Result<(), Failure>>>>,
    failed: Option<String>,
    outstanding: usize,
}

impl Sent {
    fn new(batch: &Batch<AckToken>, session: &SessionTx, writes: usize) -> Sent {
        Sent {
            base: session
                .tags
                .fetch_add(writes + 1, std::sync::atomic::Ordering::Relaxed),
            places: Vec::with_capacity(writes),
            results: batch
                .items
                .iter()
                .map(|i| vec![None; i.step.len()])
                .collect(),
            failed: None,
            outstanding: 0,
        }
    }

    fn tag(&self, k: usize) -> usize {
        self.base.wrapping_add(k)
    }

    fn place(&mut self, place: (usize, Option<usize>)) {
        self.places.push(place);
    }

    /// A write handed to the producer (or refused at once); `place` is `None` for the
    /// session's state.
    fn sent(&mut self, result: Result<(), Failure>, place: Option<(usize, Option<usize>)>) {
        match result {
            Ok(()) => self.outstanding += 1,
            Err(e) => {
                let why = match place {
                    Some(_) => e.reason().to_owned(),
                    None => format!("the session's state: {}", e.reason()),
                };
                self.failed.get_or_insert(why);
                if let Some((i, Some(j))) = place {
                    self.results[i][j] = Some(Err(e));
                }
            }
        }
    }

    /// Wait for Kafka's answer to every write handed over. Fatal when the producer's event
    /// thread has ended: no answer can come, and this producer can write no more.
    async fn answered(&mut self, sink: &Sink) -> Result<(), TxnError> {
        let mut answers: Vec<Answer> = Vec::new();
        while self.outstanding > 0 {
            sink.answers_while_read(&mut answers).await.map_err(|why| {
                TxnError::Fatal(format!(
                    "Kafka's answers are no longer read: the producer's event thread {why}"
                ))
            })?;
            for a in answers.drain(..) {
                let k = a.tag.wrapping_sub(self.base);
                if k > self.places.len() {
                    // An answer to an aborted attempt's write.
                    continue;
                }
                self.outstanding = self.outstanding.saturating_sub(1);
                if let Err(e) = &a.result {
                    self.failed.get_or_insert_with(|| e.reason().to_owned());
                }
                if let Some((i, Some(j))) = self.places.get(k) {
                    self.results[*i][*j] = Some(a.result);
                }
            }
        }
        Ok(())
    }
}

/// Commit the session's open transaction, asking again while Kafka has not confirmed it.
async fn commit(session: &SessionTx) -> Result<(), TxnError> {
    loop {
        let s = session.sink.clone();
        match tokio::task::spawn_blocking(move || s.commit_transaction(CALL_TIMEOUT))
            .await
            .map_err(|e| TxnError::Abort(e.to_string()))?
        {
            Ok(()) => return Ok(()),
            Err(TxnError::Retry(why)) => {
                tracing::warn!(error = %why, "exactly once: commit not confirmed yet; asking again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Count a settled message in the metrics, as the courier does.
fn count(metrics: &Metrics, topology: &Topology, s: &Settled) {
    let cohort = s.cohort.map_or("-", |c| topology.cohorts[c].name.as_str());
    if s.records > 0 {
        metrics.records_of(cohort).inc_by(s.records);
    }
    if s.uncaptured {
        metrics.raw_capture_refused.inc();
    }
    if let Some(code) = &s.quarantined {
        metrics.quarantine(cohort, code);
        if *code == weir_sdk::codes::Code::PayloadTooLarge {
            metrics.oversize.inc();
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

/// The session's latest committed state in `partition` of `topic` (a fresh session has
/// none: nothing committed).
fn read_state(
    kafka: &Kafka,
    topic: &str,
    partition: i32,
    client_id: &str,
) -> Result<State, OpenError> {
    let retry = |why: String| OpenError { why, fatal: false };
    let mut config = crate::capture::connection(kafka).map_err(|e| OpenError {
        why: e.to_string(),
        fatal: true,
    })?;
    config
        .set("group.id", format!("weir.sessions.reader.{client_id}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| retry(format!("cannot create a Kafka client: {e}")))?;
    // This process holds the session's transactional id now, so no transaction is open on
    // the partition: its end for a committed read is its high watermark.
    let (_, end) = consumer
        .fetch_watermarks(topic, partition, CALL_TIMEOUT)
        .map_err(|e| {
            retry(format!(
                "cannot read the end of {topic:?} partition {partition}: {e}"
            ))
        })?;
    let mut state = State::default();
    if end <= 0 {
        return Ok(state);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| retry(e.to_string()))?;
    consumer
        .assign(&list)
        .map_err(|e| retry(format!("cannot read {topic:?}: {e}")))?;
    let started = std::time::Instant::now();
    loop {
        let at = consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, partition)?.offset().to_raw())
            .unwrap_or(0);
        if at >= end {
            return Ok(state);
        }
        if started.elapsed() > CALL_TIMEOUT {
            return Err(retry(format!(
                "reading the session's state from {topic:?} partition {partition} did not reach its end ({end}) within {CALL_TIMEOUT:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => return Err(retry(format!("reading {topic:?}: {e}"))),
            Some(Ok(m)) => {
                if m.key() != Some(client_id.as_bytes()) {
                    continue;
                }
                state = State::decode(m.payload().unwrap_or_default()).map_err(|e| OpenError {
                    why: format!(
                        "the state of session {client_id:?} at {topic:?} partition {partition} offset {} is not weir's ({e}); only weir's principal may write that topic",
                        m.offset()
                    ),
                    fatal: true,
                })?;
            }
        }
    }
}

/// Create the sessions topic (compacted: only each session's latest state matters) with a
/// partition per slot, if missing; refuse one with too few.
async fn ensure_topic(
    kafka: &Kafka,
    topic: &str,
    partitions: i32,
) -> Result<(), SessionsTopicError> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let base = crate::capture::connection(kafka)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let fix = format!(
        "create it (compacted, {partitions} partitions) or give weir's principal CREATE on it"
    );
    let found = crate::topics::ensure(&base, new, &fix).await?;
    if found < partitions as usize {
        return Err(SessionsTopicError::TooFewPartitions {
            topic: topic.to_owned(),
            found,
            partitions,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::message::Message;
    use weir_core::plan::Input;

    #[test]
    fn the_state_commits_new_ids_and_forgets_released_ones() {
        let s = State::default().next([3, 7, 9], &[]);
        assert_eq!(s.committed, BTreeSet::from([3, 7, 9]));
        let s = s.next([12], &[7, 9, 40]);
        assert_eq!(s.committed, BTreeSet::from([3, 12]));
        // Released and taken again by a new message in the same transaction: committed.
        let s = s.next([3], &[3]);
        assert_eq!(s.committed, BTreeSet::from([3, 12]));
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        assert!(State::decode(br#"{"format":2,"committed":[]}"#).is_err());
        assert!(State::decode(b"").is_err());
        assert!(State::decode(br#"{"format":1,"committed":[70000]}"#).is_err());
    }

    struct Token {
        qos: u8,
        pkid: u16,
        duplicate: bool,
    }

    impl Arrival for Token {
        fn commits(&self) -> Option<u16> {
            (self.qos == 2 && !self.duplicate).then_some(self.pkid)
        }
        fn duplicate(&self) -> bool {
            self.duplicate
        }
    }

    fn input(topic: &str) -> Input {
        Input {
            id: "m".into(),
            message: Message {
                topic: topic.into(),
                payload: b"x".to_vec(),
                ..Message::default()
            },
            ..Input::default()
        }
    }

    /// A topology without cohorts.
    fn nothing_to_route() -> Topology {
        Topology {
            cohorts: Vec::new(),
            rules: Vec::new(),
            quarantine_topic: "".into(),
            raw_topic: None,
        }
    }

    /// No cohorts: every message is unrouted, its raw capture and quarantine entry written.
    fn topology() -> Arc<Topology> {
        Arc::new(Topology {
            quarantine_topic: "q".into(),
            raw_topic: Some("raw".into()),
            ..nothing_to_route()
        })
    }

    /// A refusal inside a transaction aborts it all; the core's next step for the refused
    /// message (quarantine instead) and what Kafka had taken of every message are written
    /// again in the next attempt, and duplicates write nothing.
    #[test]
    fn an_aborted_attempt_is_written_again_with_the_cores_next_step() {
        let t = topology();
        let tokens = [
            Token {
                qos: 2,
                pkid: 1,
                duplicate: false,
            },
            Token {
                qos: 2,
                pkid: 2,
                duplicate: true,
            },
            Token {
                qos: 1,
                pkid: 3,
                duplicate: false,
            },
        ];
        let messages: Vec<Taken<Token>> = tokens
            .into_iter()
            .map(|tok| (t.clone(), (tok, input("a/b"), None, None)))
            .collect();
        let mut batch = Batch::plan(messages);
        assert_eq!(batch.commits().collect::<Vec<_>>(), [1]);
        let first = batch.writes().len();
        assert!(first >= 2, "two messages write, the duplicate does not");
        assert!(batch.items[1].step.is_empty() && batch.items[1].delivery.is_none());
        // Kafka takes the first message's writes, and refuses the third's quarantine entry
        // as too large.
        let results: Vec<Vec<Option<Result<(), Failure>>>> = batch
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                (0..item.step.len())
                    .map(|j| {
                        Some(if i == 2 && j == 1 {
                            Err(Failure::TooLarge("MessageSizeTooLarge".into()))
                        } else {
                            Ok(())
                        })
                    })
                    .collect()
            })
            .collect();
        let taken_before: usize = batch.items[0].step.len();
        assert!(
            !batch.settle(results),
            "the refused message has a next step"
        );
        // Next attempt: message 1's writes again (taken, written again since the
        // transaction aborted), message 3's raw capture and a smaller quarantine entry.
        assert_eq!(batch.items[0].taken.len(), taken_before);
        assert!(batch.items[0].step.is_empty() && batch.items[0].settled.is_some());
        let step = &batch.items[2].step;
        assert_eq!(step.len(), 1);
        assert_eq!(step[0].0, Kind::Quarantine);
        let writes = batch.writes();
        assert!(writes.iter().any(|(i, j, _)| *i == 0 && j.is_none()));
        assert!(writes.iter().any(|(i, j, _)| *i == 2 && *j == Some(0)));
        // Kafka takes it all: every message is done, in arrival order.
        let results = batch
            .items
            .iter()
            .map(|item| vec![Some(Ok(())); item.step.len()])
            .collect();
        assert!(batch.settle(results));
        let settled: Vec<&Settled> = batch.settled().map(|(_, s)| s).collect();
        assert_eq!(settled.len(), 2);
        assert!(settled[1].quarantined.is_some());
        let order: Vec<u16> = batch.tokens().iter().map(|t| t.pkid).collect();
        assert_eq!(order, [1, 2, 3]);
    }
}
