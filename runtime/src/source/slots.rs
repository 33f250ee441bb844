//! Scale-out slots: which of a deployment's MQTT sessions this process holds, as Kafka's
//! group protocol decides.
//!
//! A deployment with `mqtt.slots = N` has N persistent sessions (`<client_id>-<k>`) on its
//! shared subscriptions, and a topic `weir.slots.<client_id>` with N partitions. Every
//! process joins the consumer group of that name; the partitions Kafka assigns it are the
//! slots it holds. Kafka does the rest: it notices a process that stopped heartbeating
//! (after `mqtt.slot_timeout_s`) and gives its slots to the others, who connect under
//! those client ids and drain what the broker kept in the sessions. weir has no
//! coordinator of its own.
//!
//! - **Cooperative rebalancing** (`cooperative-sticky`): a process joining takes slots from
//!   the others without stopping the rest; a slot given up is released only after its
//!   messages inside weir are acknowledged (or the drain timeout passes).
//! - **No stealing back.** A process whose hold may have lapsed (paused, cut off from
//!   Kafka) connects no session until Kafka confirms it again: a session connects only
//!   while a *lease* holds, renewed by an offset commit on the held partitions, which the
//!   group coordinator refuses from a member it has expelled. A lost assignment drops the
//!   sessions at once. If a zombie's connection is still open when the new holder
//!   connects, the broker's session takeover closes it; its unacknowledged messages go to
//!   the new holder (at least once, nothing lost).

use super::Source;
use crate::config::{Kafka, Mqtt};
use crate::metrics::GroupMetrics;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The Kafka topic (and consumer group) whose partitions are the slots of the deployment
/// whose client id is `client_id`.
pub fn topic(client_id: &str) -> String {
    crate::config::slots_topic(client_id)
}

/// Until when a hold confirmed by a request sent at `sent` may be relied on: half the
/// group's session timeout, so that a process that cannot renew stops connecting well
/// before Kafka gives its slots away.
pub fn lease_until(sent: Instant, timeout: Duration) -> Instant {
    sent + timeout / 2
}

/// How often the hold is confirmed: several times per lease, so one lost request does not
/// let it lapse.
pub fn renew_every(timeout: Duration) -> Duration {
    (timeout / 8).max(Duration::from_millis(100))
}

/// The group's heartbeat interval for a session timeout.
fn heartbeat(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(100))
}

/// The slots named by a partition list of the slots topic.
fn slots_of(list: &TopicPartitionList) -> Vec<u16> {
    let mut slots: Vec<u16> = list
        .elements()
        .iter()
        .filter_map(|e| u16::try_from(e.partition()).ok())
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// The slots a member's assignment (Kafka's consumer protocol `Assignment`, as the group
/// describes it) gives it in `topic`; `None` when the bytes are not one.
pub fn assigned(bytes: &[u8], topic: &str) -> Option<Vec<u16>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn i16(&mut self) -> Option<i16> {
            Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }
        fn i32(&mut self) -> Option<i32> {
            Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
    }
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut slots = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let name = r.take(len)?.to_vec();
        let partitions = r.i32()?;
        // Each partition takes 4 bytes: a count beyond what is left is not an assignment.
        if usize::try_from(partitions).ok()? > r.0.len() / 4 {
            return None;
        }
        for _ in 0..partitions {
            let p = r.i32()?;
            if name == topic.as_bytes() {
                slots.push(u16::try_from(p).ok()?);
            }
        }
    }
    slots.sort_unstable();
    Some(slots)
}

/// Which process holds each slot: the group's members (named by their client ids) and
/// their assignments.
fn describe(client: &BaseConsumer, topic: &str) -> Option<Vec<(u16, String)>> {
    let list = client
        .fetch_group_list(Some(topic), Duration::from_secs(5))
        .ok()?;
    let group = list.groups().iter().find(|g| g.name() == topic)?;
    let mut holders = Vec::new();
    for m in group.members() {
        for k in m
            .assignment()
            .and_then(|a| assigned(a, topic))
            .unwrap_or_default()
        {
            holders.push((k, m.client_id().to_owned()));
        }
    }
    Some(holders)
}

/// How often the group's description (who holds which slot) is refreshed.
const DESCRIBE_EVERY: Duration = Duration::from_secs(5);

/// Refresh who holds which slot, on a thread and client of its own: describing the group
/// asks every broker and waits for a slow one, which must not hold up the renewals.
fn describer(
    client: BaseConsumer,
    topic: String,
    changed: Arc<AtomicBool>,
    group: GroupMetrics,
    stop: Arc<AtomicBool>,
) {
    let mut described: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if changed.swap(false, Ordering::AcqRel)
            || described.is_none_or(|d| d.elapsed() > DESCRIBE_EVERY)
        {
            described = Some(Instant::now());
            if let Some(holders) = describe(&client, &topic) {
                group.set_slot_holders(holders);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Errors from the group that retrying cannot fix: weir stops and names them.
fn fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidSessionTimeout
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::InconsistentGroupProtocol
    )
}

/// What the group's callbacks act on.
struct Holder {
    source: Source,
    runtime: tokio::runtime::Handle,
    lease: watch::Sender<Option<Instant>>,
    timeout: Duration,
    /// How long a slot given up may take to acknowledge what it has inside weir.
    drain: Duration,
    held: Arc<Mutex<BTreeSet<u16>>>,
    group: GroupMetrics,
    topic: String,
    /// Set by a rebalance: the group's description is out of date.
    changed: Arc<AtomicBool>,
    /// Set when the process leaves the group: its sessions have ended (or are ending with
    /// the process), so a revocation only updates the count.
    leaving: Arc<AtomicBool>,
}

impl Holder {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<u16>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "scale-out slots: giving up");
        self.source.fail(why);
    }

    fn explain(&self, code: RDKafkaErrorCode, e: &dyn std::fmt::Display) -> String {
        match code {
            RDKafkaErrorCode::InvalidSessionTimeout => format!(
                "Kafka refused the slots' consumer group {:?}: {e}; mqtt.slot_timeout_s ({} s) must lie within the brokers' group.min.session.timeout.ms and group.max.session.timeout.ms",
                self.topic,
                self.timeout.as_secs()
            ),
            _ => format!(
                "Kafka refused the slots' consumer group {:?}: {e}; weir's Kafka principal needs READ on the group and the topic of that name",
                self.topic
            ),
        }
    }
}

impl ClientContext for Holder {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(code) if fatal(code) => self.fail(self.explain(code, &reason)),
            _ => tracing::warn!(%error, reason, "scale-out slots: Kafka client error"),
        }
    }
}

impl ConsumerContext for Holder {
    /// Before slots go: release them (cleanly, or at once when Kafka already gave them to
    /// another process).
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let slots = slots_of(list);
                if slots.is_empty() {
                    return;
                }
                let lost = consumer.assignment_lost();
                if lost {
                    // The hold lapsed: connect nothing until Kafka assigns slots again.
                    self.lease.send_replace(None);
                    tracing::warn!(
                        ?slots,
                        "scale-out slots lost: Kafka gave them to another process while this one was paused or cut off; dropping their sessions"
                    );
                } else {
                    tracing::info!(?slots, "scale-out slots: releasing");
                }
                if !self.leaving.load(Ordering::Acquire) {
                    self.runtime
                        .block_on(futures::future::join_all(slots.iter().map(
                            |k| async move {
                                if lost {
                                    self.source.lose_slot(*k).await;
                                } else {
                                    self.source.release_slot(*k, self.drain).await;
                                }
                            },
                        )));
                }
                let mut held = self.held();
                for k in &slots {
                    held.remove(k);
                }
                self.group.slots_held.set(held.len() as i64);
                self.group.slot_changes.inc_by(slots.len() as u64);
                self.changed.store(true, Ordering::Release);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                // Until a renewal or an assignment confirms the hold again, the sessions
                // neither reconnect nor take messages.
                self.lease.send_replace(None);
                tracing::warn!(error = %e, "scale-out slots: rebalance failed");
            }
        }
    }

    /// After slots come: the assignment itself confirms the hold; their sessions connect.
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let slots = slots_of(list);
            self.lease
                .send_replace(Some(lease_until(Instant::now(), self.timeout)));
            if !slots.is_empty() {
                tracing::info!(?slots, "scale-out slots: taking");
            }
            let _guard = self.runtime.enter();
            for k in &slots {
                self.source.open_slot(*k);
            }
            let mut held = self.held();
            held.extend(slots.iter().copied());
            self.group.slots_held.set(held.len() as i64);
            self.group.slot_changes.inc_by(slots.len() as u64);
            self.changed.store(true, Ordering::Release);
            // A process holding no slot is ready: it stands by.
            if held.is_empty() {
                self.group.set_ready(true);
            }
        }
    }
}

/// This process's membership in a deployment's slots group; leaving it (dropping it, or
/// [`Membership::leave`]) hands the slots to the other processes at once.
pub struct Membership {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    held: Arc<Mutex<BTreeSet<u16>>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

/// The slots group member's settings: cooperative rebalancing, the session timeout, and a
/// poll interval that outlasts a revocation's drain.
fn member_config(
    base: rdkafka::ClientConfig,
    topic: &str,
    process: &str,
    (timeout, drain): (Duration, Duration),
) -> rdkafka::ClientConfig {
    let mut config = base;
    config
        .set("group.id", topic)
        .set("client.id", process)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", timeout.as_millis().to_string())
        .set(
            "heartbeat.interval.ms",
            heartbeat(timeout).as_millis().to_string(),
        )
        // A revocation may block the group's thread for the drain: Kafka must not
        // take that for a dead process (and librdkafka wants it above the timeout).
        .set(
            "max.poll.interval.ms",
            (timeout.max(drain + Duration::from_secs(30)).as_millis() + 60_000)
                .max(300_000)
                .to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    config
}

impl Membership {
    /// Join the slots group of `mqtt`'s deployment (creating its topic with `slots`
    /// partitions if missing), driving `source`'s sessions from the assignment. `process`
    /// names this process to Kafka (the member's client id and the commits' metadata);
    /// `runtime` is the one the sessions run on.
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        kafka: &Kafka,
        mqtt: &Mqtt,
        process: &str,
        source: Source,
        lease: watch::Sender<Option<Instant>>,
        drain: Duration,
        group: GroupMetrics,
        runtime: tokio::runtime::Handle,
    ) -> Result<Membership, SlotsError> {
        let slots = mqtt.slots.unwrap_or(1);
        let topic = topic(&mqtt.client_id);
        let base = crate::capture::connection(kafka)?;
        ensure_topic(&base, &topic, slots).await?;
        let timeout = Duration::from_secs(mqtt.slot_timeout_s.into());
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(AtomicBool::new(true));
        {
            let client: BaseConsumer = base.create().map_err(|source| SlotsError::Client {
                what: "metadata client",
                source,
            })?;
            let (topic, changed, group, stop) =
                (topic.clone(), changed.clone(), group.clone(), stop.clone());
            std::thread::Builder::new()
                .name("weir-slots-view".into())
                .spawn(move || describer(client, topic, changed, group, stop))
                .map_err(SlotsError::Thread)?;
        }
        let holder = Holder {
            leaving: stop.clone(),
            changed: changed.clone(),
            source,
            runtime,
            lease,
            timeout,
            drain,
            held: held.clone(),
            group,
            topic: topic.clone(),
        };
        let config = member_config(base, &topic, process, (timeout, drain));
        let consumer: BaseConsumer<Holder> =
            config
                .create_with_context(holder)
                .map_err(|source| SlotsError::Client {
                    what: "consumer",
                    source,
                })?;
        consumer
            .subscribe(&[&topic])
            .map_err(|source| SlotsError::Join {
                topic: topic.clone(),
                source,
            })?;
        let thread = {
            let (stop, process) = (stop.clone(), process.to_owned());
            std::thread::Builder::new()
                .name("weir-slots".into())
                .spawn(move || run(consumer, &stop, &process))
                .map_err(SlotsError::Thread)?
        };
        Ok(Membership {
            stop,
            thread: Some(thread),
            held,
        })
    }

    /// The slots this process holds.
    pub fn held(&self) -> Vec<u16> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Leave the group (its slots go to the other processes now, not after the session
    /// timeout), waiting at most `limit`.
    pub async fn leave(mut self, limit: Duration) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(limit, joined).await.is_err() {
                tracing::warn!(
                    "leaving the slots' consumer group took too long; Kafka moves the slots after the session timeout"
                );
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The group's thread: serve its callbacks and confirm the hold, until stopped; then leave
/// the group (dropping the consumer closes it).
fn run(consumer: BaseConsumer<Holder>, stop: &AtomicBool, process: &str) {
    let ctx = consumer.context();
    let every = renew_every(ctx.timeout);
    let mut next = Instant::now() + every;
    let mut warned: Option<Instant> = None;
    let mut held_back = false;
    while !stop.load(Ordering::Acquire) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            match e.rdkafka_error_code() {
                Some(code) if fatal(code) => {
                    ctx.fail(ctx.explain(code, &e));
                    // Leaving: the sessions end with the lane, not through revocations.
                    stop.store(true, Ordering::Release);
                    break;
                }
                _ => tracing::debug!(error = %e, "scale-out slots: consumer"),
            }
        }
        // Unconfirmed, the slots take no more messages: Kafka may be giving them away.
        let lapsed = ctx
            .lease
            .borrow()
            .is_none_or(|until| until <= Instant::now());
        if lapsed != held_back && !ctx.held().is_empty() {
            if lapsed {
                tracing::warn!(
                    "scale-out slots: Kafka has not confirmed this process's hold for half the session timeout; taking no more messages until it does"
                );
            } else {
                tracing::info!("scale-out slots: hold confirmed again; taking messages");
            }
            ctx.source.hold_back(lapsed);
            held_back = lapsed;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + every;
        let held: Vec<u16> = ctx.held().iter().copied().collect();
        if held.is_empty() {
            continue;
        }
        let mut list = TopicPartitionList::new();
        for k in &held {
            let _ = list.add_partition_offset(&ctx.topic, i32::from(*k), Offset::Offset(0));
        }
        for mut e in list.elements_for_topic(&ctx.topic) {
            e.set_metadata(process);
        }
        let sent = Instant::now();
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => {
                ctx.lease.send_replace(Some(lease_until(sent, ctx.timeout)));
                warned = None;
            }
            Err(e) => {
                if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, slots = ?held, "scale-out slots: Kafka did not confirm this process's hold; its sessions do not reconnect until it does");
                    warned = Some(Instant::now());
                }
            }
        }
    }
    drop(consumer);
}

/// Create the slots topic with `slots` partitions if missing; refuse one with another
/// count (slots are fixed once chosen, like partitions).
async fn ensure_topic(
    base: &rdkafka::ClientConfig,
    topic: &str,
    slots: u16,
) -> Result<(), SlotsError> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let new = NewTopic::new(topic, i32::from(slots), TopicReplication::Fixed(-1));
    let fix = format!("create it with {slots} partitions, or give weir's principal CREATE on it");
    let found = crate::topics::ensure(base, new, &fix).await?;
    if found != usize::from(slots) {
        return Err(SlotsError::Changed {
            topic: topic.to_owned(),
            found,
            slots,
        });
    }
    Ok(())
}

/// Joining the slots' group failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    /// Kafka's settings cannot be used.
    #[error(transparent)]
    Settings(#[from] crate::capture::CaptureError),
    /// The slots topic cannot be created or found.
    #[error("the slots topic: {0}")]
    Topic(#[from] crate::topics::TopicError),
    /// The slots topic's partitions are not the configured slots.
    #[error(
        "the slots topic {topic:?} has {found} partitions but mqtt.slots is {slots}: slots are fixed once chosen (each is a persistent MQTT session); set mqtt.slots = {found}, or start a new deployment under another mqtt.client_id"
    )]
    Changed {
        /// The topic.
        topic: String,
        /// Its partitions.
        found: usize,
        /// `mqtt.slots`.
        slots: u16,
    },
    /// librdkafka would not create a client.
    #[error("cannot create the slots' Kafka {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// librdkafka's reason.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The group cannot be joined.
    #[error("cannot join the slots' consumer group {topic:?}: {source}")]
    Join {
        /// The slots topic (and group).
        topic: String,
        /// Kafka's reason.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A thread could not be started.
    #[error("cannot start the slots' thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_well_inside_the_session_timeout_and_is_renewed_often() {
        let timeout = Duration::from_secs(10);
        let t = Instant::now();
        assert_eq!(lease_until(t, timeout), t + Duration::from_secs(5));
        // Several renewals fit in one lease, and heartbeats fit in the timeout.
        assert!(renew_every(timeout) * 3 < timeout / 2);
        assert!(heartbeat(timeout) * 3 < timeout);
        assert_eq!(
            renew_every(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn slots_are_the_partitions_of_the_list() {
        let mut list = TopicPartitionList::new();
        list.add_partition("weir.slots.x", 3);
        list.add_partition("weir.slots.x", 0);
        list.add_partition("weir.slots.x", 3);
        assert_eq!(slots_of(&list), [0, 3]);
        assert_eq!(topic("plant"), "weir.slots.plant");
        assert_eq!(super::super::slot_client_id("plant", 2), "plant-2");
    }

    #[test]
    fn assignments_are_read_from_the_consumer_protocol() {
        // Version 1; two topics: the slots topic with partitions 4 and 1, another with 7;
        // then user data.
        let mut b = vec![0, 1, 0, 0, 0, 2];
        for (name, parts) in [("weir.slots.x", &[4i32, 1][..]), ("other", &[7][..])] {
            b.extend_from_slice(&(name.len() as i16).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(assigned(&b, "weir.slots.x"), Some(vec![1, 4]));
        assert_eq!(assigned(&b, "nothing"), Some(vec![]));
        // Truncated anywhere, or claiming more partitions than there are bytes: refused,
        // never a panic or a huge allocation.
        for n in 0..b.len() - 4 {
            let _ = assigned(&b[..n], "weir.slots.x");
        }
        assert_eq!(
            assigned(&[0, 1, 0, 0, 0, 1, 0, 1, b'a', 0x7f, 0, 0, 0], "a"),
            None
        );
        assert_eq!(assigned(&[], "a"), None);
    }

    #[test]
    fn only_refusals_that_retrying_cannot_fix_are_fatal() {
        assert!(fatal(RDKafkaErrorCode::InvalidSessionTimeout));
        assert!(fatal(RDKafkaErrorCode::GroupAuthorizationFailed));
        assert!(!fatal(RDKafkaErrorCode::CoordinatorNotAvailable));
        assert!(!fatal(RDKafkaErrorCode::RebalanceInProgress));
        assert!(!fatal(RDKafkaErrorCode::UnknownMemberId));
    }
}
