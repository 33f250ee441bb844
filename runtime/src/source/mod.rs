//! The source stage: weir's own MQTT 5 / 3.1.1 client connection, with a persistent
//! session and manual acks, on top of rumqttc's packet codec ([`codec`]).
//!
//! weir owns the connection loop (rather than using rumqttc's event loop) because the
//! guarantees live there:
//! - **An ack goes out only on the connection its message arrived on.** Each message carries
//!   an [`AckToken`] naming its connection; a token from an earlier connection is dropped,
//!   because the broker redelivers that message on the new one and may have reused its
//!   packet id. (A client event loop with its own request queue would send a PUBACK queued
//!   during a reconnect on the next connection.)
//! - **Bounded in-flight, arrival to PUBACK written.** A permit is taken before a PUBLISH
//!   is handed on and released when its PUBACK is written (or its token dropped), so at
//!   most `max_in_flight` messages exist inside weir. MQTT 5 brokers are also told this as
//!   the receive maximum; a 3.1.1 broker is held back by TCP once weir stops reading.
//! - **Any size.** No Maximum Packet Size is announced; a PUBLISH larger than weir holds
//!   in memory is streamed: its payload is hashed and only a prefix kept, and the message
//!   is handed on marked [`Oversize`] for quarantine.
//! - **Messages are handed on in chunks**: what one socket read brought (up to 64 messages)
//!   goes on in one channel send, with one clock reading; the reader hands on what it
//!   holds before it waits for anything (the socket, a permit, a pause).
//! - **PUBACKs are batched**: every ack ready at once goes out in one write.
//! - **Retained messages** are not re-fetched: MQTT 5 retain handling (default "new
//!   subscription only"), and no re-subscribe on a reconnect that found the session.
//! - **Refused subscriptions** stop start-up with the filter and the reason; after a
//!   reconnect they are an error log and a metric.
//! - **Scale-out slots** ([`slots`]): a [`Source`] may run several sessions, one per slot
//!   Kafka's group gives this process; their messages share one channel and one in-flight
//!   budget, and each message's ack goes back to the session it came from.
//! - **Exactly once for QoS 2** ([`Transactional`]): an exactly-once session subscribes at
//!   QoS 2 and connects only once the Kafka side has fenced earlier holders and read which
//!   packet ids it committed; a PUBLISH whose id is committed or already on its way is
//!   handed on marked [`AckToken::duplicate`] (answered, not written again); a PUBREL is
//!   answered with PUBCOMP only once the Kafka side has forgotten the id for good.

pub mod codec;
pub mod slots;
pub mod tls;

use crate::config::RetainHandling;
use crate::config::{Mqtt, Protocol, Secret};
use crate::metrics::{GroupMetrics, Metrics};
use bytes::BytesMut;
use codec::{ConnectOptions, Frame, Proto, ProtocolError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tls::Certain;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use weir_core::message::{Message, OVERSIZE_PREFIX, Oversize};

/// Room for topic and properties on top of `max_message_bytes` before a PUBLISH is streamed
/// instead of read whole.
const HEADER_ROOM: usize = 128 << 10;
/// Longest wait for the TCP connection and the CONNACK, and for the SUBACK.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Largest packet other than PUBLISH weir buffers (a SUBACK, a DISCONNECT with a reason).
const MAX_CONTROL_PACKET: usize = 1 << 20;
/// Most hand-overs of acks (each a run of them, in order) taken for one write.
const ACK_BATCH: usize = 4096;
/// Most messages a reader hands on at once: what one socket read brought, up to this.
const CHUNK: usize = 64;

/// Messages as the reader hands them on: those of one socket read, in arrival order.
pub type Chunk = Vec<Incoming>;

/// A received message and what is needed to acknowledge it.
#[derive(Debug)]
pub struct Incoming {
    /// The message (for an oversize one, the payload is a prefix).
    pub message: Message,
    /// Redelivered by the broker (DUP flag).
    pub dup: bool,
    /// A retained message.
    pub retain: bool,
    /// Set when the payload was larger than `mqtt.max_message_bytes`.
    pub oversize: Option<Oversize>,
    /// The ack handle; it holds an in-flight permit until the PUBACK is written.
    pub ack: AckToken,
}

/// Identifies a received PUBLISH for its PUBACK, and holds its place in weir: an in-flight
/// permit, `weir_in_flight` and its group's, and its session's count. A token that goes
/// without its PUBACK (its session ended, its connection was lost) gives them back when
/// dropped; the session gives back a whole run of acknowledged tokens at once, so that the
/// semaphore's lock and the shared counters are touched once per run, not per message.
#[derive(Debug)]
pub struct AckToken {
    connection: u64,
    /// 0 for QoS 0 (nothing to send).
    pkid: u16,
    /// 2: answered with PUBREC (the id stays taken until the broker's PUBREL).
    qos: u8,
    /// An exactly-once session's QoS 2 message whose packet id is committed in Kafka or on
    /// its way there: answered, not written again.
    duplicate: bool,
    arrived: Instant,
    /// The session it arrived on, which holds its place until it is given back.
    link: Arc<Link>,
    /// Its place is still held: given back by the drop, unless the session gave it back
    /// with its run.
    held: bool,
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if self.held {
            self.link.give_back(1);
        }
    }
}

/// A message counted in the session it arrived on ([`Link::claim`]) for as long as this
/// lives: from before it is taken until its ack token takes it over; released however it
/// ends, a reader stopped mid-wait included.
#[derive(Debug)]
struct Claim(Option<Arc<Link>>);

impl Claim {
    /// The session, counted from now on by whoever takes it (an ack token).
    fn take(mut self) -> Arc<Link> {
        self.0.take().expect("a claim is taken once")
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            link.unclaim(1);
        }
    }
}

impl AckToken {
    /// When the message arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// The message's QoS as delivered.
    pub fn qos(&self) -> u8 {
        self.qos
    }

    /// The packet id (0 for QoS 0).
    pub fn pkid(&self) -> u16 {
        self.pkid
    }

    /// Already in Kafka (or on its way there) under this packet id: acknowledge it, write
    /// nothing.
    pub fn duplicate(&self) -> bool {
        self.duplicate
    }

    /// The scale-out slot of the session it arrived on (`None`: the only session).
    pub fn slot(&self) -> Option<u16> {
        self.link.slot
    }

    /// The connection of its session it arrived on.
    pub fn connection(&self) -> u64 {
        self.connection
    }
}

/// Why an exactly-once session could not be opened on the Kafka side.
#[derive(Debug, Clone)]
pub struct OpenError {
    /// What went wrong, and the fix.
    pub why: String,
    /// Retrying cannot help (transactions unsupported or not allowed): weir stops.
    pub fatal: bool,
}

/// What an exactly-once session needs from the Kafka side (weir's transactions stage);
/// the source itself knows nothing of Kafka.
pub trait Transactional: Send + Sync + 'static {
    /// Before session `slot` first connects: become the only writer of its transactions
    /// (fencing any earlier holder) and read the QoS 2 packet ids it committed and the
    /// broker has not released yet.
    fn open(
        &self,
        slot: Option<u16>,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u16>, OpenError>>;
    /// The broker released `pkid` (PUBREL) on `connection` of session `slot`: forget it
    /// for good, then [`Source::complete`] it.
    fn released(&self, slot: Option<u16>, connection: u64, pkid: u16);
    /// Session `slot` ended here (its slot given up, or weir stopping).
    fn closed(&self, slot: Option<u16>);
}

/// What goes to a session's connection loop to be written.
#[derive(Debug)]
enum Outgoing {
    /// PUBACKs (PUBRECs for QoS 2), in this order.
    Acks(Vec<AckToken>),
    /// PUBCOMPs on a connection: these released ids are forgotten for good.
    Complete(u64, Vec<u16>),
}

/// Source errors.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL is not usable.
    #[error("mqtt.url {0:?}: {1}")]
    Url(String, String),
    /// The broker refused the connection in a way retrying cannot fix.
    #[error(
        "the MQTT broker refused the connection: {0}; check mqtt.client_id, mqtt.username and mqtt.password"
    )]
    Refused(String),
    /// The broker refused a subscription.
    #[error(
        "the MQTT broker refused subscription {filter:?}: {reason}; check the filter and the broker's ACLs (or its shared-subscription support)"
    )]
    Subscription {
        /// The topic filter.
        filter: String,
        /// The broker's reason.
        reason: String,
    },
    /// TLS cannot work as configured (a file, a certificate the broker or weir rejects).
    #[error("MQTT {0}")]
    Tls(String),
    /// A TLS file or setting cannot be used.
    #[error("MQTT {0}")]
    TlsSettings(#[from] tls::TlsError),
    /// The password cannot be read.
    #[error(transparent)]
    Password(#[from] crate::config::KeyedSecretError),
    /// An exactly-once session's Kafka side cannot work (transactions unsupported or not
    /// allowed).
    #[error("exactly once: {0}")]
    ExactlyOnce(String),
}

/// The read side of a connection, plain or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write side of a connection, plain or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// (host, port, TLS) of an `mqtt://` or `mqtts://` URL.
fn host_port(url: &str) -> Result<(String, u16, bool), SourceError> {
    let (rest, tls) = match url.strip_prefix("mqtts://") {
        Some(rest) => (rest, true),
        None => (
            url.strip_prefix("mqtt://")
                .or_else(|| url.strip_prefix("tcp://"))
                .ok_or_else(|| {
                    SourceError::Url(
                        url.into(),
                        "expected mqtt://host:port or mqtts://host:port".into(),
                    )
                })?,
            false,
        ),
    };
    let rest = rest.trim_end_matches('/');
    let default = if tls { 8883 } else { 1883 };
    match rest.rsplit_once(':') {
        Some((h, p)) if !p.ends_with(']') => Ok((
            h.to_owned(),
            p.parse()
                .map_err(|_| SourceError::Url(url.into(), format!("port {p:?} is not a number")))?,
            tls,
        )),
        _ => Ok((rest.to_owned(), default, tls)),
    }
}

/// Milliseconds on a monotonic clock (keep-alive bookkeeping must not follow wall-clock
/// steps).
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When a message that arrives now arrived: Unix ms for the record, monotonic for latency.
fn arrival_now() -> (i64, Instant) {
    (now_ms(), Instant::now())
}

/// Wait for `f` with `waiting` set: a reader held back by weir (for a permit, a pause, the
/// pipeline), which the keep-alive must not take for the broker being silent. The silence
/// counts from the end of the wait.
async fn held<T>(
    waiting: &AtomicBool,
    last_read: &AtomicU64,
    clock: Clock,
    f: impl std::future::Future<Output = T>,
) -> T {
    waiting.store(true, Ordering::Relaxed);
    let out = f.await;
    last_read.store(clock.ms(), Ordering::Relaxed);
    // Released after `last_read`: whoever sees the wait over sees when it ended.
    waiting.store(false, Ordering::Release);
    out
}

/// Backoff before reconnect attempt `n` (from 0): exponential to 10 s, with ±50 % jitter so
/// a fleet of weir processes does not reconnect in lockstep.
fn backoff(n: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << n.min(7)).min(10_000);
    let jitter = rand::random_range(base / 2..=base + base / 2);
    Duration::from_millis(jitter)
}

/// One session's end of the ack path, and its messages inside weir (for releasing a slot
/// only once they are acknowledged).
#[derive(Debug)]
struct Link {
    acks: mpsc::UnboundedSender<Outgoing>,
    /// The session's slot.
    slot: Option<u16>,
    /// An exactly-once session: QoS 2 is taken, and answered after Kafka committed.
    exactly_once: bool,
    /// Exactly once: the QoS 2 packet ids handed on or committed and not yet released by
    /// the broker, each with the connection that took it (0: committed before this
    /// process opened the session). A redelivery of one of them carries DUP.
    qos2: Mutex<std::collections::HashMap<u16, u64>>,
    /// Counted only for a slot (a session without slots is never released alone): the
    /// count is two atomic writes per message on a line the reader and courier share.
    counted: bool,
    in_flight: AtomicU32,
    idle: tokio::sync::Notify,
    /// Mirrors the session's pause, so that the reader's per-message check is one load.
    paused: AtomicBool,
    /// The source's in-flight budget: a message's permit is taken when it is read and given
    /// back with its ack token.
    permits: Arc<Semaphore>,
    /// `weir_in_flight` and its group's.
    gauges: [prometheus_client::metrics::gauge::Gauge; 2],
}

impl Link {
    fn new(
        acks: mpsc::UnboundedSender<Outgoing>,
        slot: Option<u16>,
        exactly_once: bool,
        permits: Arc<Semaphore>,
        gauges: [prometheus_client::metrics::gauge::Gauge; 2],
    ) -> Link {
        Link {
            acks,
            slot,
            exactly_once,
            qos2: Mutex::new(std::collections::HashMap::new()),
            counted: slot.is_some(),
            in_flight: AtomicU32::new(0),
            idle: tokio::sync::Notify::new(),
            paused: AtomicBool::new(false),
            permits,
            gauges,
        }
    }

    /// Give back the places of `n` messages that leave weir (acknowledged or dropped):
    /// their permits, their count in the gauges and in the session.
    fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.permits.add_permits(n);
        for g in &self.gauges {
            g.dec_by(n as i64);
        }
        self.unclaim(n as u32);
    }

    /// Count a message coming in (slots only).
    fn claim(&self) {
        if self.counted {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Let go of the session's `tokens`, answered or dropped (`each` sees every one first),
    /// giving back their places as one run.
    fn settle(&self, tokens: &mut Vec<AckToken>, mut each: impl FnMut(&AckToken)) {
        let given = tokens.len();
        for mut t in tokens.drain(..) {
            debug_assert!(
                std::ptr::eq(Arc::as_ptr(&t.link), self),
                "another session's token"
            );
            each(&t);
            t.held = false;
        }
        self.give_back(given);
    }

    /// Uncount `n` messages: acknowledged, dropped, or not taken after all.
    fn unclaim(&self, n: u32) {
        if self.counted && self.in_flight.fetch_sub(n, Ordering::SeqCst) == n {
            self.idle.notify_waiters();
        }
    }

    /// Exactly once: take `pkid` for a QoS 2 message arriving on `connection`; the
    /// connection that held it, if a message not yet released did.
    fn take(&self, pkid: u16, connection: u64) -> Option<u64> {
        self.qos2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pkid, connection)
    }

    /// Exactly once: the broker released `pkid` (PUBREL); a PUBLISH under it from now on is a
    /// new message.
    fn release(&self, pkid: u16) {
        self.qos2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pkid);
    }

    /// Wait until none of the session's messages is inside weir.
    async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A running session, as the [`Source`] holds it.
struct Running {
    link: Arc<Link>,
    stop: watch::Sender<bool>,
    /// While set, the session's reader takes no more messages.
    pause: watch::Sender<bool>,
    done: Arc<tokio::sync::Notify>,
    finished: Arc<AtomicBool>,
}

impl Running {
    /// Hold the reader back (or let it go on).
    fn pause(&self, paused: bool) {
        self.link.paused.store(paused, Ordering::SeqCst);
        let _ = self.pause.send(paused);
    }

    /// Stop the session (writing the acks already given, then DISCONNECT) and wait for it
    /// to end, at most `limit`.
    async fn stop(&self, limit: Duration) {
        let _ = self.stop.send(true);
        let wait = self.done.notified();
        if !self.finished.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }
}

/// What every session of a [`Source`] shares: how to reach the broker, the channel
/// messages go out on, the in-flight budget.
struct Inner {
    addr: String,
    proto: Proto,
    mqtt: Mqtt,
    tls: Option<tls::Settings>,
    tx: mpsc::Sender<Chunk>,
    permits: Arc<Semaphore>,
    max_in_flight: u32,
    metrics: Arc<Metrics>,
    group: GroupMetrics,
    fatal: Arc<watch::Sender<Option<String>>>,
    /// When membership must be confirmed before a session (re)connects: until when the
    /// last confirmation holds.
    lease: Option<watch::Receiver<Option<Instant>>>,
    /// Running sessions by slot (`None`: the one session of a deployment without slots).
    sessions: Mutex<BTreeMap<Option<u16>, Running>>,
    /// Set by [`Source::disconnect`]: no session starts after it.
    closed: AtomicBool,
    /// Exactly once: the Kafka side of the sessions.
    transactions: Option<Arc<dyn Transactional>>,
}

/// The MQTT side as the pipeline sees it: acks go in, a stop comes in. It runs one
/// session, or, with scale-out slots, the sessions of the slots this process holds; their
/// messages share one channel and one in-flight budget.
#[derive(Clone)]
pub struct Source {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").finish_non_exhaustive()
    }
}

impl Source {
    /// Start the session: connect (retrying while the broker is unreachable), subscribe,
    /// and hand messages on through the returned channel — from the first CONNACK on, since
    /// a resumed session's backlog may arrive before the SUBACK. A refused login or
    /// subscription ends the session: [`Source::failed`] says why. With `transactions`
    /// the session is exactly once: it takes QoS 2 and answers it after the Kafka
    /// transaction holding it commits.
    pub fn start(
        cfg: &Mqtt,
        metrics: Arc<Metrics>,
        group: GroupMetrics,
        transactions: Option<Arc<dyn Transactional>>,
    ) -> Result<(Source, mpsc::Receiver<Chunk>), SourceError> {
        let (source, rx) = Source::prepare(cfg, (metrics, group), None, transactions)?;
        source.open(None);
        Ok((source, rx))
    }

    /// A source for scale-out slots: no session runs until [`Source::open_slot`], and each
    /// (re)connects only while `lease` says this process's hold on its slots is confirmed.
    pub fn for_slots(
        cfg: &Mqtt,
        metrics: Arc<Metrics>,
        group: GroupMetrics,
        lease: watch::Receiver<Option<Instant>>,
        transactions: Option<Arc<dyn Transactional>>,
    ) -> Result<(Source, mpsc::Receiver<Chunk>), SourceError> {
        Source::prepare(cfg, (metrics, group), Some(lease), transactions)
    }

    fn prepare(
        cfg: &Mqtt,
        (metrics, group): (Arc<Metrics>, GroupMetrics),
        lease: Option<watch::Receiver<Option<Instant>>>,
        transactions: Option<Arc<dyn Transactional>>,
    ) -> Result<(Source, mpsc::Receiver<Chunk>), SourceError> {
        let (host, port, tls) = host_port(&cfg.url)?;
        let tls = if tls {
            let name = host.trim_start_matches('[').trim_end_matches(']');
            Some(tls::Settings::new(cfg.tls.as_ref(), name)?)
        } else {
            None
        };
        cfg.password()?;
        let (tx, rx) = mpsc::channel(usize::from(cfg.max_in_flight));
        let inner = Inner {
            addr: format!("{host}:{port}"),
            proto: match cfg.protocol {
                Protocol::V5 => Proto::V5,
                Protocol::V311 => Proto::V311,
            },
            mqtt: cfg.clone(),
            tls,
            tx,
            permits: Arc::new(Semaphore::new(usize::from(cfg.max_in_flight))),
            max_in_flight: u32::from(cfg.max_in_flight),
            metrics,
            group,
            fatal: Arc::new(watch::channel(None).0),
            lease,
            sessions: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
            transactions,
        };
        Ok((
            Source {
                inner: Arc::new(inner),
            },
            rx,
        ))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<Option<u16>, Running>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Start the session of `slot` (`None`: the deployment's only one), unless it runs.
    fn open(&self, slot: Option<u16>) {
        let inner = &self.inner;
        let mut sessions = self.sessions();
        if sessions.contains_key(&slot) || inner.closed.load(Ordering::Acquire) {
            return;
        }
        let client_id = match slot {
            Some(k) => slot_client_id(&inner.mqtt.client_id, k),
            None => inner.mqtt.client_id.clone(),
        };
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link::new(
            ack_tx,
            slot,
            inner.transactions.is_some(),
            inner.permits.clone(),
            [
                inner.metrics.in_flight.clone(),
                inner.group.in_flight.clone(),
            ],
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (pause_tx, pause_rx) = watch::channel(false);
        let done = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let cfg = &inner.mqtt;
        let session = Session {
            addr: inner.addr.clone(),
            proto: inner.proto,
            connect: ConnectOptions {
                client_id,
                keep_alive_s: cfg.keep_alive_s,
                session_expiry_s: cfg.session_expiry_s,
                receive_maximum: cfg.max_in_flight,
                login: None,
            },
            slot,
            mqtt: cfg.clone(),
            tls: inner.tls.clone(),
            subs: cfg.subscriptions.clone(),
            retain: cfg.retain_handling,
            keep_alive: Duration::from_secs(cfg.keep_alive_s.into()),
            max_message_bytes: cfg.max_message_bytes,
            tx: inner.tx.clone(),
            link: link.clone(),
            acks: ack_rx,
            stop: stop_rx,
            pause: pause_rx,
            lease: inner.lease.clone(),
            metrics: inner.metrics.clone(),
            group: inner.group.clone(),
            connection: Arc::new(AtomicU64::new(0)),
            first: true,
            fatal: inner.fatal.clone(),
            transactions: inner.transactions.clone(),
        };
        session.spawn(done.clone(), finished.clone());
        sessions.insert(
            slot,
            Running {
                link,
                stop: stop_tx,
                pause: pause_tx,
                done,
                finished,
            },
        );
    }

    /// Start holding `slot`: connect its session (once membership is confirmed) and take
    /// its messages, the backlog another process left included.
    pub fn open_slot(&self, slot: u16) {
        self.open(Some(slot));
    }

    /// Give `slot` up cleanly: take no more of its messages, wait (at most `limit`) until
    /// those inside weir are acknowledged, then disconnect; the session and anything still
    /// unacknowledged stay at the broker for the next holder.
    pub async fn release_slot(&self, slot: u16, limit: Duration) {
        let Some(running) = self.sessions().remove(&Some(slot)) else {
            return;
        };
        running.pause(true);
        if tokio::time::timeout(limit, running.link.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                slot,
                left = running.link.in_flight.load(Ordering::Acquire),
                "slot released before all its messages were acknowledged; the next holder receives them again"
            );
        }
        running.stop(HANDSHAKE).await;
    }

    /// Drop `slot` at once (Kafka gave it to another process already): what is
    /// unacknowledged goes to the next holder.
    pub async fn lose_slot(&self, slot: u16) {
        let running = self.sessions().remove(&Some(slot));
        if let Some(running) = running {
            running.pause(true);
            running.stop(HANDSHAKE).await;
        }
    }

    /// Hold back (or let go on) every session's reader: while this process cannot confirm
    /// its hold on its slots it takes no more of their messages; what it has goes on to
    /// Kafka and is acknowledged.
    pub fn hold_back(&self, paused: bool) {
        for running in self.sessions().values() {
            running.pause(paused);
        }
    }

    /// End every session for good, naming why ([`Source::failed`] resolves with it).
    pub fn fail(&self, why: String) {
        // `send_replace`, not `send`: the reason is kept even while nobody waits for it
        // (`send` drops the value when no receiver exists).
        self.inner.fatal.send_replace(Some(why));
    }

    /// Resolves when the source has ended for good (a refused login or subscription, a
    /// membership Kafka refuses), with the reason.
    pub async fn failed(&self) -> String {
        let mut fatal = self.inner.fatal.subscribe();
        let why = fatal
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }

    /// Acknowledge messages (PUBACKs, in this order), each on the session and connection it
    /// arrived on; a token from an earlier connection is dropped (the broker redelivers
    /// that message).
    pub fn ack(&self, mut tokens: Vec<AckToken>) {
        // If a session has ended its tokens are dropped, which releases their permits.
        while let Some(first) = tokens.first() {
            let link = first.link.clone();
            let run = tokens
                .iter()
                .take_while(|t| Arc::ptr_eq(&t.link, &link))
                .count();
            let rest = if run == tokens.len() {
                Vec::new()
            } else {
                tokens.split_off(run)
            };
            let _ = link.acks.send(Outgoing::Acks(tokens));
            tokens = rest;
        }
    }

    /// PUBCOMP these released packet ids on `connection` of session `slot` (the Kafka side
    /// has forgotten them for good). On another connection they are dropped: the broker
    /// sends the PUBREL again on the new one.
    pub fn complete(&self, slot: Option<u16>, connection: u64, ids: Vec<u16>) {
        if let Some(running) = self.sessions().get(&slot) {
            let _ = running.link.acks.send(Outgoing::Complete(connection, ids));
        }
    }

    /// Messages inside weir: received and not yet acknowledged (or dropped).
    pub fn in_flight(&self) -> u32 {
        self.inner.max_in_flight - self.inner.permits.available_permits() as u32
    }

    /// Wait until every message handed on has been acknowledged or dropped.
    pub async fn drained(&self) {
        let _ = self
            .inner
            .permits
            .acquire_many(self.inner.max_in_flight)
            .await;
    }

    /// Disconnect every session cleanly (each session, and anything unacknowledged, stays
    /// at the broker), after writing the acks already given.
    pub async fn disconnect(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let running: Vec<Running> = std::mem::take(&mut *self.sessions())
            .into_values()
            .collect();
        futures::future::join_all(running.iter().map(|r| r.stop(HANDSHAKE))).await;
    }
}

/// The MQTT client id of scale-out slot `k` of a deployment whose client id is `base`.
pub fn slot_client_id(base: &str, k: u16) -> String {
    format!("{base}-{k}")
}

/// What the reader tells the connection loop.
enum Control {
    SubAck(Vec<codec::Granted>),
    PubRel(u16),
    PingResp,
    Disconnect(String),
    Closed(String),
}

/// One connection's reader: frames packets, hands PUBLISHes on (taking an in-flight permit
/// first), and reports the rest to the connection loop.
struct Reader {
    read: ReadHalf,
    buf: BytesMut,
    proto: Proto,
    connection: u64,
    max_message_bytes: usize,
    tx: mpsc::Sender<Chunk>,
    link: Arc<Link>,
    pause: watch::Receiver<bool>,
    control: mpsc::Sender<Control>,
    metrics: Arc<Metrics>,
    /// `clock` ms of the last byte read; while `waiting` the reader is held back by weir,
    /// not by the broker.
    last_read: Arc<AtomicU64>,
    waiting: Arc<AtomicBool>,
    clock: Clock,
    /// Messages decoded but not yet handed on. Handed on before every wait (for the
    /// socket, a permit, a pause, the session's loop), so none is held while the reader
    /// could be stopped or a message behind it is waited for.
    pending: Chunk,
    /// When the messages being decoded arrived: the last read, or the end of the last wait
    /// weir held the reader in (Unix ms for the record, monotonic for latency).
    arrived: (i64, Instant),
}

impl Reader {
    async fn fill(&mut self) -> Result<(), String> {
        self.flush().await;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 << 10);
        }
        match self.read.read_buf(&mut self.buf).await {
            Ok(0) => Err("the broker closed the connection".into()),
            Ok(_) => {
                self.last_read.store(self.clock.ms(), Ordering::Relaxed);
                self.arrived = arrival_now();
                Ok(())
            }
            Err(e) => Err(format!("read failed: {e}")),
        }
    }

    /// Hand the pending messages on. The channel holds as many chunks as there are
    /// in-flight permits, so it has room for this one and the send does not wait.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        let sent = match self.tx.try_send(chunk) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                let tx = &self.tx;
                held(&self.waiting, &self.last_read, self.clock, tx.send(chunk))
                    .await
                    .is_ok()
            }
        };
        if !sent {
            // The pipeline stopped taking messages (shutting down): read no more, and let
            // the connection go on writing the acks of what is still in flight, held back
            // by weir (not a silent broker) for as long as that takes.
            self.waiting.store(true, Ordering::Release);
            std::future::pending::<()>().await;
        }
    }

    async fn run(mut self) {
        let why = loop {
            match self.next().await {
                Ok(true) => {}
                Ok(false) => {
                    self.flush().await;
                    return;
                }
                Err(e) => break e,
            }
        };
        // What was read before the failure goes on; the session then reconnects.
        self.flush().await;
        let _ = self.control.send(Control::Closed(why)).await;
    }

    /// Read and dispatch one packet; `Ok(false)` when the pipeline is gone.
    async fn next(&mut self) -> Result<bool, String> {
        let fixed = loop {
            match codec::fixed_header(&self.buf).map_err(|e| e.to_string())? {
                Some(f) => break f,
                None => self.fill().await?,
            }
        };
        if fixed.kind() != 3 && fixed.remaining > MAX_CONTROL_PACKET {
            return Err(format!(
                "a control packet (type {}) of {} bytes; refusing to buffer it",
                fixed.kind(),
                fixed.remaining
            ));
        }
        let stream = fixed.kind() == 3 && fixed.remaining > self.max_message_bytes + HEADER_ROOM;
        let publish = if stream {
            self.streamed(fixed).await.map_err(|e| e.to_string())?
        } else {
            let need = fixed.frame_len();
            if self.buf.len() < need {
                self.buf.reserve(need - self.buf.len());
            }
            while self.buf.len() < need {
                self.fill().await?;
            }
            let frame = self
                .proto
                .decode(&mut self.buf)
                .map_err(|e| e.to_string())?;
            let control = match frame {
                Frame::Publish(p) => {
                    let oversize = (p.payload.len() > self.max_message_bytes).then(|| Oversize {
                        size: p.payload.len() as u64,
                        sha256: hex::encode(Sha256::digest(&p.payload)),
                    });
                    let mut p = p;
                    if oversize.is_some() {
                        p.payload.truncate(OVERSIZE_PREFIX);
                        p.payload.shrink_to_fit();
                    }
                    return self.deliver(p, oversize).await;
                }
                Frame::SubAck { granted, .. } => Control::SubAck(granted),
                Frame::PingResp => Control::PingResp,
                Frame::PubRel(pkid) => {
                    // Free the id here, before the next packet is read: a broker may reuse it
                    // for a new message right after its PUBREL (mosquitto does, before
                    // PUBCOMP), and the session's loop, which forgets it for good, may be
                    // behind the reader.
                    self.link.release(pkid);
                    Control::PubRel(pkid)
                }
                Frame::Disconnect(why) => Control::Disconnect(why),
                Frame::ConnAck { .. } => return Err("unexpected CONNACK".into()),
                Frame::Other(kind) => {
                    tracing::warn!(kind, "ignoring an unexpected MQTT packet");
                    return Ok(true);
                }
            };
            self.flush().await;
            return Ok(self.control.send(control).await.is_ok());
        };
        let (p, oversize) = publish;
        self.deliver(p, Some(oversize)).await
    }

    /// A PUBLISH too large to hold: decode its header, hash its payload as it streams past
    /// and keep a prefix.
    async fn streamed(
        &mut self,
        fixed: codec::Fixed,
    ) -> Result<(codec::Publish, Oversize), ProtocolError> {
        let header_len = loop {
            if let Some(n) = self.proto.publish_header_len(&fixed, &self.buf)? {
                break n;
            }
            self.fill().await.map_err(ProtocolError)?;
        };
        // The topic and packet id always fit; MQTT 5 properties beyond HEADER_ROOM are
        // skipped rather than buffered (the entry then lacks its user properties).
        let base = {
            let topic_len = usize::from(u16::from_be_bytes([
                self.buf[fixed.header_len],
                self.buf[fixed.header_len + 1],
            ]));
            2 + topic_len + if (fixed.byte1 >> 1) & 0b11 > 0 { 2 } else { 0 }
        };
        let keep = if header_len > HEADER_ROOM {
            base
        } else {
            header_len
        };
        let head = fixed.header_len + keep;
        while self.buf.len() < head {
            self.fill().await.map_err(ProtocolError)?;
        }
        let mut header = self.buf.split_to(head);
        if keep < header_len {
            if self.proto == Proto::V5 {
                header.extend_from_slice(&[0]);
            }
            let mut skip = header_len - keep;
            while skip > 0 {
                if self.buf.is_empty() {
                    self.fill().await.map_err(ProtocolError)?;
                }
                let n = skip.min(self.buf.len());
                let _ = self.buf.split_to(n);
                skip -= n;
            }
        }
        let mut publish = self.proto.decode_publish_header(&fixed, &header)?;
        let mut left = fixed.remaining - header_len;
        let size = left as u64;
        let mut hash = Sha256::new();
        let mut prefix = Vec::with_capacity(OVERSIZE_PREFIX);
        loop {
            let n = left.min(self.buf.len());
            let chunk = self.buf.split_to(n);
            hash.update(&chunk);
            let keep = (OVERSIZE_PREFIX - prefix.len()).min(chunk.len());
            prefix.extend_from_slice(&chunk[..keep]);
            left -= n;
            if left == 0 {
                break;
            }
            self.fill().await.map_err(ProtocolError)?;
        }
        publish.payload = prefix;
        Ok((
            publish,
            Oversize {
                size,
                sha256: hex::encode(hash.finalize()),
            },
        ))
    }

    /// Count the message in its session before handing it on. The message is counted
    /// before the pause is looked at, and a release sets the pause before it looks at the
    /// count: one of them sees the other, so a slot is never released with a message on
    /// its way in.
    async fn claim(&mut self) -> Claim {
        loop {
            self.link.claim();
            if !self.link.paused.load(Ordering::SeqCst) {
                return Claim(Some(self.link.clone()));
            }
            self.link.unclaim(1);
            // The slot is being given up, or its hold is unconfirmed: what follows stays at
            // the broker until the hold is confirmed again (or goes to the next holder).
            // What was claimed before goes on first, so that the release can see it done.
            self.flush().await;
            let mut pause = self.pause.clone();
            let waited = held(
                &self.waiting,
                &self.last_read,
                self.clock,
                pause.wait_for(|p| !*p),
            );
            if waited.await.is_err() {
                std::future::pending::<()>().await;
            }
            self.arrived = arrival_now();
        }
    }

    /// Exactly once: take `pkid` for a QoS 2 PUBLISH; whether it is a redelivery of one
    /// already on its way to Kafka or committed there. A redelivery carries DUP, and under
    /// MQTT 5 comes only on a later connection than the one that took the id (3.1.1 may
    /// resend on the same one). Anything else under an id still taken is the broker reusing
    /// the id early (mosquitto does once a session queues more than 65,535 messages): a new
    /// message, written — a possible duplicate rather than a loss.
    fn redelivery(&self, pkid: u16, dup: bool) -> bool {
        let Some(by) = self.link.take(pkid, self.connection) else {
            return false;
        };
        tracing::debug!(pkid, dup, "QoS 2 PUBLISH under a packet id already taken");
        dup && (by != self.connection || self.proto == Proto::V311)
    }

    async fn deliver(
        &mut self,
        p: codec::Publish,
        oversize: Option<Oversize>,
    ) -> Result<bool, String> {
        if p.qos == 2 && !self.link.exactly_once {
            return Err(
                "the broker sent a QoS 2 message on a QoS 1 subscription (a protocol violation)"
                    .into(),
            );
        }
        // Counted before the permit is waited for, so that a release waits for it; a reader
        // stopped while it waits drops the claim with it.
        let claim = self.claim().await;
        // From here the ack token holds the permit (forgotten by the semaphore): given back
        // by the token's drop or with its session's run of acks.
        let tried = self.link.permits.try_acquire().map(|p| p.forget());
        let permit = match tried {
            Ok(()) => Ok(()),
            Err(tokio::sync::TryAcquireError::Closed) => Err(()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // The in-flight budget is spent: what is pending goes on first (its acks
                // free the permits waited for).
                self.flush().await;
                let link = self.link.clone();
                let waited = held(
                    &self.waiting,
                    &self.last_read,
                    self.clock,
                    link.permits.acquire(),
                );
                let got = waited.await.map(|p| p.forget()).map_err(|_| ());
                self.arrived = arrival_now();
                got
            }
        };
        if permit.is_err() {
            return Ok(false);
        }
        self.metrics.received.inc();
        for g in &self.link.gauges {
            g.inc();
        }
        if p.dup {
            self.metrics.redelivered.inc();
        }
        let duplicate = p.qos == 2 && self.redelivery(p.pkid, p.dup);
        if p.retain {
            self.metrics.retained.inc();
        }
        let incoming = Incoming {
            message: Message {
                topic: p.topic,
                payload: p.payload,
                properties: p.properties,
                content_type: p.content_type,
                received_at_ms: self.arrived.0,
            },
            dup: p.dup,
            retain: p.retain,
            oversize,
            ack: AckToken {
                connection: self.connection,
                pkid: if p.qos == 0 { 0 } else { p.pkid },
                qos: p.qos,
                duplicate,
                arrived: self.arrived.1,
                link: claim.take(),
                held: true,
            },
        };
        self.pending.push(incoming);
        if self.pending.len() >= CHUNK {
            self.flush().await;
        }
        Ok(true)
    }
}

/// The session: connects, subscribes, runs connections one after another until stopped.
struct Session {
    addr: String,
    proto: Proto,
    /// CONNECT's options; the login is filled in for each connection.
    connect: ConnectOptions,
    /// The scale-out slot it is (`None`: the deployment has no slots).
    slot: Option<u16>,
    /// The config, for what is read again at each connection (the password file).
    mqtt: Mqtt,
    tls: Option<tls::Settings>,
    subs: Vec<String>,
    retain: RetainHandling,
    keep_alive: Duration,
    max_message_bytes: usize,
    tx: mpsc::Sender<Chunk>,
    link: Arc<Link>,
    acks: mpsc::UnboundedReceiver<Outgoing>,
    stop: watch::Receiver<bool>,
    pause: watch::Receiver<bool>,
    /// Until when this process's hold on its slots is confirmed (with slots).
    lease: Option<watch::Receiver<Option<Instant>>>,
    metrics: Arc<Metrics>,
    group: GroupMetrics,
    connection: Arc<AtomicU64>,
    /// No subscription granted yet in this process: a refusal is fatal.
    first: bool,
    fatal: Arc<watch::Sender<Option<String>>>,
    /// Exactly once: the Kafka side, opened before the first connection.
    transactions: Option<Arc<dyn Transactional>>,
}

/// How a connection ended.
enum End {
    /// Stop requested; DISCONNECT sent.
    Stopped,
    /// Lost (or refused in a way worth retrying).
    Lost(String),
    /// Cannot go on (refused login or subscription at start-up).
    Fatal(SourceError),
}

impl Session {
    /// Run the session on a task of its own; `done` is notified and `finished` set when it
    /// ends, however it ends. A session that dies must stop weir, not leave its lane waiting
    /// for messages that will never come.
    fn spawn(self, done: Arc<tokio::sync::Notify>, finished: Arc<AtomicBool>) {
        let (slot, fatal, transactions) =
            (self.slot, self.fatal.clone(), self.transactions.clone());
        tokio::spawn(async move {
            use futures::FutureExt;
            if let Err(panic) = std::panic::AssertUnwindSafe(self.run())
                .catch_unwind()
                .await
            {
                let what = crate::panic_message(&*panic);
                fatal.send_replace(Some(format!(
                    "the MQTT session panicked ({what}); weir stops, and the broker redelivers what was not acknowledged"
                )));
            }
            if let Some(t) = transactions {
                t.closed(slot);
            }
            finished.store(true, Ordering::Release);
            done.notify_waiters();
        });
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        let mut opened = self.transactions.is_none();
        loop {
            if *self.stop.borrow() || !self.confirmed().await {
                return;
            }
            if !opened {
                match self.open_transactions().await {
                    Ok(()) => opened = true,
                    Err(End::Stopped) => return,
                    Err(End::Fatal(e)) => {
                        self.group.set_ready(false);
                        tracing::error!(error = %e, "MQTT: giving up");
                        self.fatal.send_replace(Some(e.to_string()));
                        return;
                    }
                    Err(End::Lost(why)) => {
                        let wait = backoff(failures);
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %why, retry_in = ?wait, slot = self.slot, "exactly once: the session's Kafka side is not ready; trying again");
                        let mut stop = self.stop.clone();
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                }
            }
            let before = self.connection.load(Ordering::Acquire);
            let end = self.connection().await;
            if self.connection.load(Ordering::Acquire) != before {
                failures = 0;
            }
            match end {
                // Stopped on purpose (a slot released, weir stopping): the group's other
                // sessions still say whether it is ready.
                End::Stopped => return,
                End::Fatal(e) => {
                    self.group.set_ready(false);
                    tracing::error!(error = %e, "MQTT: giving up");
                    // Kept even if the lane is not waiting yet (see `Source::fail`).
                    self.fatal.send_replace(Some(e.to_string()));
                    return;
                }
                End::Lost(why) => {
                    self.group.set_ready(false);
                    let wait = backoff(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %why, retry_in = ?wait, "MQTT connection lost; reconnecting");
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// Exactly once, before the first connection: the Kafka side fences earlier holders of
    /// the session and says which QoS 2 packet ids it committed (their redeliveries are
    /// answered, not written again).
    async fn open_transactions(&mut self) -> Result<(), End> {
        let Some(t) = self.transactions.clone() else {
            return Ok(());
        };
        let mut stop = self.stop.clone();
        let opened = tokio::select! {
            o = t.open(self.slot) => o,
            _ = stop.changed() => return Err(End::Stopped),
        };
        match opened {
            Ok(committed) => {
                tracing::info!(
                    slot = self.slot,
                    committed = committed.len(),
                    "exactly once: the session's transactions are this process's"
                );
                self.link
                    .qos2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(committed.into_iter().map(|id| (id, 0)));
                Ok(())
            }
            Err(e) if e.fatal => Err(End::Fatal(SourceError::ExactlyOnce(e.why))),
            Err(e) => Err(End::Lost(e.why)),
        }
    }

    /// With slots, wait until Kafka has confirmed this process still holds its slots: a
    /// process that was paused or cut off may have lost them, and connecting would take
    /// the session from its new holder. `false` when stopped meanwhile.
    async fn confirmed(&mut self) -> bool {
        let Some(lease) = &mut self.lease else {
            return true;
        };
        let mut said = false;
        loop {
            let until = *lease.borrow_and_update();
            if until.is_some_and(|u| u > Instant::now()) {
                return true;
            }
            if !said {
                tracing::info!(
                    slot = self.slot,
                    "waiting for Kafka to confirm this process still holds the slot before connecting"
                );
                said = true;
            }
            tokio::select! {
                r = lease.changed() => if r.is_err() { return false },
                _ = self.stop.changed() => return false,
            }
        }
    }

    /// A TLS failure: fatal when weir has not connected yet (the config is wrong), else
    /// worth retrying (the broker's certificate may be changing).
    fn tls_failure(&self, e: &std::io::Error) -> End {
        match self.tls.as_ref().and_then(|t| t.explain(e)) {
            Some((why, Certain::Yes)) if self.first => End::Fatal(SourceError::Tls(why)),
            Some((why, _)) => End::Lost(why),
            None => End::Lost(format!("TLS with {} failed: {e}", self.addr)),
        }
    }

    /// An I/O failure during the handshake: explained when TLS says why.
    fn tls_failure_or(&self, e: &std::io::Error, what: &str) -> End {
        match self.tls.as_ref().and_then(|t| t.explain(e)) {
            Some(_) => self.tls_failure(e),
            None => End::Lost(format!("{what}: {e}")),
        }
    }

    /// TCP (and TLS) to the broker.
    async fn open(&mut self) -> Result<(ReadHalf, WriteHalf), End> {
        let stream = match tokio::time::timeout(HANDSHAKE, TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(End::Lost(format!("cannot connect to {}: {e}", self.addr))),
            Err(_) => return Err(End::Lost(format!("connecting to {} timed out", self.addr))),
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            let (read, write) = stream.into_split();
            return Ok((Box::new(read), Box::new(write)));
        };
        let connector = tls.connector().map_err(|e| {
            if self.first {
                End::Fatal(SourceError::TlsSettings(e))
            } else {
                End::Lost(format!("TLS: {e}"))
            }
        })?;
        let name = tls.name();
        let stream = match tokio::time::timeout(HANDSHAKE, connector.connect(name, stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.tls_failure(&e)),
            Err(_) => {
                return Err(End::Lost(format!(
                    "the TLS handshake with {} took longer than {HANDSHAKE:?}",
                    self.addr
                )));
            }
        };
        let (read, write) = tokio::io::split(stream);
        Ok((Box::new(read), Box::new(write)))
    }

    async fn connection(&mut self) -> End {
        if let Err(end) = self.login() {
            return end;
        }
        let (read, write, buf, session_present) = match self.handshake().await {
            Ok(h) => h,
            Err(end) => return end,
        };
        let first = self.first;
        let n = self.connection.fetch_add(1, Ordering::AcqRel) + 1;
        if n > 1 {
            self.metrics.reconnects.inc();
        }
        let version = match self.proto {
            Proto::V5 => "5",
            Proto::V311 => "3.1.1",
        };
        tracing::info!(
            connection = n,
            slot = self.slot,
            session_present,
            "MQTT {version} connected"
        );
        let (control_tx, control) = mpsc::channel(16);
        let mut conn = Conn {
            n,
            write,
            out: BytesMut::with_capacity(4096),
            suback_deadline: None,
            clock: Clock(Instant::now()),
            last_read: Arc::new(AtomicU64::new(0)),
            waiting: Arc::new(AtomicBool::new(false)),
        };
        conn.last_read.store(conn.clock.ms(), Ordering::Relaxed);
        let reader = Reader {
            read,
            buf,
            proto: self.proto,
            connection: n,
            max_message_bytes: self.max_message_bytes,
            tx: self.tx.clone(),
            link: self.link.clone(),
            pause: self.pause.clone(),
            control: control_tx,
            metrics: self.metrics.clone(),
            last_read: conn.last_read.clone(),
            waiting: conn.waiting.clone(),
            clock: conn.clock,
            pending: Vec::with_capacity(CHUNK),
            arrived: arrival_now(),
        };
        let _abort = AbortOnDrop(tokio::spawn(reader.run()));

        // Subscribe on the first connection (the config may have changed since the session
        // was made) and whenever the broker lost the session; not on a reconnect that found
        // it, which would fetch retained messages again under MQTT 3.1.1.
        if first || !session_present {
            if let Err(end) = self.subscribe(&mut conn).await {
                return end;
            }
        } else {
            tracing::info!("MQTT session resumed; subscriptions kept by the broker");
            self.group.set_ready(true);
        }
        self.serve(&mut conn, control).await
    }

    /// The login for this connection: the password file is read again each time.
    fn login(&mut self) -> Result<(), End> {
        match self.mqtt.password() {
            Ok(password) => {
                self.connect.login = self
                    .mqtt
                    .username
                    .clone()
                    .map(|u| (u, password.unwrap_or_else(|| Secret::new(""))));
                Ok(())
            }
            Err(e) if self.first => Err(End::Fatal(SourceError::Password(e))),
            Err(e) => Err(End::Lost(e.to_string())),
        }
    }

    /// Connect, send CONNECT and read the CONNACK: the halves, what was read past the
    /// CONNACK, and whether the broker had the session.
    async fn handshake(&mut self) -> Result<(ReadHalf, WriteHalf, BytesMut, bool), End> {
        let (mut read, mut write) = self.open().await?;
        // The handshake may have taken a while: a slot released or lost meanwhile, or a
        // hold no longer confirmed, must not take the session from its new holder.
        if *self.stop.borrow() {
            return Err(End::Stopped);
        }
        if self
            .lease
            .as_ref()
            .is_some_and(|l| l.borrow().is_none_or(|until| until <= Instant::now()))
        {
            return Err(End::Lost(
                "Kafka no longer confirms this process holds the slot".into(),
            ));
        }
        let mut out = BytesMut::with_capacity(256);
        if let Err(e) = self.proto.connect(&self.connect, &mut out) {
            return Err(End::Fatal(SourceError::Refused(e.to_string())));
        }
        if let Err(e) = send(&mut write, &out).await {
            return Err(self.tls_failure_or(&e, "write failed"));
        }
        let mut buf = BytesMut::with_capacity(64 << 10);
        let proto = self.proto;
        let connack = tokio::time::timeout(HANDSHAKE, async {
            loop {
                if let Some(f) = codec::fixed_header(&buf).map_err(|e| Err(e.to_string()))?
                    && buf.len() >= f.frame_len()
                {
                    return proto.decode(&mut buf).map_err(|e| Err(e.to_string()));
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) => return Err(Err("the broker closed the connection".to_owned())),
                    Ok(_) => {}
                    Err(e) => return Err(Ok(e)),
                }
            }
        })
        .await;
        match connack {
            Ok(Ok(Frame::ConnAck {
                refused: None,
                session_present,
            })) => Ok((read, write, buf, session_present)),
            Ok(Ok(Frame::ConnAck {
                refused: Some((why, fatal)),
                ..
            })) => Err(if fatal {
                End::Fatal(SourceError::Refused(why))
            } else {
                End::Lost(format!("connection refused: {why}"))
            }),
            Ok(Ok(other)) => Err(End::Lost(format!("expected CONNACK, got {other:?}"))),
            Ok(Err(Ok(e))) => Err(self.tls_failure_or(&e, "read failed")),
            Ok(Err(Err(e))) => Err(End::Lost(e)),
            Err(_) => Err(End::Lost("no CONNACK within 10 s".into())),
        }
    }

    /// Send SUBSCRIBE for every filter; the SUBACK is awaited by [`Session::serve`].
    async fn subscribe(&mut self, conn: &mut Conn) -> Result<(), End> {
        if let Err(e) = self.proto.subscribe(
            1,
            &self.subs,
            (self.retain, self.transactions.is_some()),
            &mut conn.out,
        ) {
            return Err(End::Fatal(SourceError::Subscription {
                filter: self.subs.join(", "),
                reason: e.to_string(),
            }));
        }
        if let Err(e) = send(&mut conn.write, &conn.out).await {
            return Err(End::Lost(format!("write failed: {e}")));
        }
        conn.out.clear();
        conn.suback_deadline = Some(tokio::time::Instant::now() + HANDSHAKE);
        Ok(())
    }

    /// The connection's loop: PUBACKs as acks are released, keep-alive, what the reader
    /// reports, the SUBACK's deadline, and a stop.
    async fn serve(&mut self, conn: &mut Conn, mut control: mpsc::Receiver<Control>) -> End {
        let mut ping = tokio::time::interval(self.keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut given = Vec::with_capacity(64);
        let mut tokens = Vec::with_capacity(1024);
        let mut complete = Vec::new();
        loop {
            let deadline = conn.suback_deadline;
            let suback_wait = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let end = tokio::select! {
                got = self.acks.recv_many(&mut given, ACK_BATCH) => {
                    if got == 0 {
                        return End::Stopped;
                    }
                    for g in given.drain(..) {
                        match g {
                            Outgoing::Acks(t) => tokens.extend(t),
                            Outgoing::Complete(n, ids) if n == conn.n => complete.extend(ids),
                            Outgoing::Complete(..) => {}
                        }
                    }
                    #[cfg(debug_assertions)]
                    crate::failpoint("session-panic");
                    self.ack(conn, &mut tokens, &mut complete).await
                }
                _ = ping.tick() => self.ping(conn).await,
                c = control.recv() => self.reported(conn, c).await,
                () = suback_wait => {
                    if conn.waiting.load(Ordering::Relaxed) {
                        // Held back by weir (a session backlog ahead of the SUBACK), not
                        // by the broker.
                        conn.suback_deadline = Some(tokio::time::Instant::now() + HANDSHAKE);
                        None
                    } else {
                        Some(End::Lost("no SUBACK within 10 s".into()))
                    }
                }
                _ = self.stop.changed() => return self.leave(conn).await,
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// PUBACK (PUBREC for QoS 2) the released messages of this connection, in order (those
    /// of an earlier connection are dropped: the broker redelivers them), and PUBCOMP the
    /// released ids forgotten for good.
    async fn ack(
        &mut self,
        conn: &mut Conn,
        tokens: &mut Vec<AckToken>,
        complete: &mut Vec<u16>,
    ) -> Option<End> {
        #[cfg(debug_assertions)]
        if !tokens.is_empty() && crate::failpoint_armed("slow-acks") {
            // Test builds: the answer leaves late, as over a slow link, so that a SIGKILL
            // lands between Kafka taking a message and the broker hearing of it.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for t in tokens.iter() {
            if t.connection == conn.n && t.pkid != 0 {
                ack_packet(self.proto, t, &mut conn.out);
            }
        }
        for pkid in complete.drain(..) {
            self.proto.pubcomp(pkid, &mut conn.out);
        }
        if !conn.out.is_empty() {
            if let Err(e) = write_within(&mut conn.write, &conn.out, self.keep_alive).await {
                return Some(End::Lost(e));
            }
            conn.out.clear();
        }
        let now = Instant::now();
        self.link.settle(tokens, |t| {
            if t.connection == conn.n {
                self.metrics.acked.inc();
                self.group.ack_seconds.observe(now - t.arrived);
            }
        });
        None
    }

    /// Keep-alive: PINGREQ, or the connection is lost if the broker has been silent for
    /// two periods (unless weir itself holds the reader back).
    async fn ping(&mut self, conn: &mut Conn) -> Option<End> {
        // `waiting` first: a wait that ended since is then seen with its `last_read`.
        let held = conn.waiting.load(Ordering::Acquire);
        let silent = conn
            .clock
            .ms()
            .saturating_sub(conn.last_read.load(Ordering::Relaxed));
        if !held && silent > 2 * self.keep_alive.as_millis() as u64 {
            return Some(End::Lost(format!(
                "nothing from the broker for {silent} ms (keep-alive)"
            )));
        }
        self.proto.pingreq(&mut conn.out);
        if let Err(e) = write_within(&mut conn.write, &conn.out, self.keep_alive).await {
            return Some(End::Lost(e));
        }
        conn.out.clear();
        None
    }

    /// What the reader reported.
    async fn reported(&mut self, conn: &mut Conn, c: Option<Control>) -> Option<End> {
        match c {
            Some(Control::SubAck(granted)) => {
                conn.suback_deadline = None;
                self.suback(conn, &granted).await
            }
            Some(Control::PingResp) => None,
            Some(Control::PubRel(pkid)) => self.pubrel(conn, pkid).await,
            Some(Control::Disconnect(why)) => {
                tracing::warn!(reason = %why, "the broker disconnected weir");
                None
            }
            Some(Control::Closed(why)) => Some(End::Lost(why)),
            None => Some(End::Lost("the reader stopped".into())),
        }
    }

    /// PUBREL: exactly once, the Kafka side forgets the id for good before PUBCOMP goes
    /// (a PUBCOMP before that would let the broker reuse the id while a new holder still
    /// takes it for committed); otherwise PUBCOMP at once.
    async fn pubrel(&mut self, conn: &mut Conn, pkid: u16) -> Option<End> {
        if let Some(t) = &self.transactions {
            t.released(self.slot, conn.n, pkid);
            return None;
        }
        self.proto.pubcomp(pkid, &mut conn.out);
        if let Err(e) = write_within(&mut conn.write, &conn.out, self.keep_alive).await {
            return Some(End::Lost(e));
        }
        conn.out.clear();
        None
    }

    /// The SUBACK: every filter granted QoS 1 or more makes the group ready; a refusal is
    /// fatal before the first grant in this process, and logged after a reconnect.
    async fn suback(&mut self, conn: &mut Conn, granted: &[codec::Granted]) -> Option<End> {
        let refused = refusals(&self.subs, granted, self.transactions.is_some());
        if let Some((filter, reason)) = refused.first() {
            self.metrics
                .subscriptions_refused
                .inc_by(refused.len() as u64);
            if self.first {
                let e = SourceError::Subscription {
                    filter: filter.clone(),
                    reason: reason.clone(),
                };
                disconnect(self.proto, &mut conn.write).await;
                return Some(End::Fatal(e));
            }
            for (filter, reason) in &refused {
                tracing::error!(%filter, %reason, "MQTT subscription refused after reconnecting; messages on it are not received");
            }
        } else {
            tracing::info!(filters = self.subs.len(), "MQTT subscriptions acknowledged");
            self.group.set_ready(true);
        }
        self.first = false;
        None
    }

    /// Stopping: write the acks already given, then DISCONNECT.
    async fn leave(&mut self, conn: &mut Conn) -> End {
        while let Ok(given) = self.acks.try_recv() {
            let given = match given {
                Outgoing::Acks(tokens) => tokens,
                Outgoing::Complete(n, ids) => {
                    if n == conn.n {
                        for pkid in ids {
                            self.proto.pubcomp(pkid, &mut conn.out);
                        }
                    }
                    continue;
                }
            };
            for t in given
                .into_iter()
                .filter(|t| t.connection == conn.n && t.pkid != 0)
            {
                ack_packet(self.proto, &t, &mut conn.out);
                self.metrics.acked.inc();
                self.group.ack_seconds.observe(t.arrived.elapsed());
            }
        }
        if !conn.out.is_empty() {
            let _ = write_within(&mut conn.write, &conn.out, self.keep_alive).await;
            conn.out.clear();
        }
        disconnect(self.proto, &mut conn.write).await;
        End::Stopped
    }
}

/// One connection's writing side and what its loop keeps between events.
struct Conn {
    /// The connection's number in this session (tokens of other connections are stale).
    n: u64,
    write: WriteHalf,
    /// Packets to write, reused.
    out: BytesMut,
    /// When the SUBACK is due, while one is awaited.
    suback_deadline: Option<tokio::time::Instant>,
    clock: Clock,
    /// When the reader last read anything ([`Clock::ms`]).
    last_read: Arc<AtomicU64>,
    /// The reader is held back by weir (paused, or out of in-flight permits).
    waiting: Arc<AtomicBool>,
}

/// The filters a SUBACK refused, with why: a failure code, a grant below QoS 1 (weir
/// acknowledges only after Kafka has the message) or, exactly once (`qos2`), below QoS 2,
/// or no answer for the filter.
fn refusals(subs: &[String], granted: &[codec::Granted], qos2: bool) -> Vec<(String, String)> {
    let need = if qos2 { 2 } else { 1 };
    subs.iter()
        .zip(granted.iter().map(Some).chain(std::iter::repeat(None)))
        .filter_map(|(f, g)| match g {
            Some(Ok(q)) if *q >= need => None,
            Some(Ok(q)) if qos2 => Some((
                f.clone(),
                format!("granted QoS {q}, exactly_once needs QoS 2 (raise the broker's maximum QoS, or set exactly_once = false)"),
            )),
            Some(Ok(q)) => Some((
                f.clone(),
                format!("granted QoS {q}, weir needs QoS 1 to acknowledge after Kafka"),
            )),
            Some(Err(why)) => Some((f.clone(), why.clone())),
            None => Some((f.clone(), "missing from the SUBACK".into())),
        })
        .collect()
}

/// A message's answer: PUBREC for QoS 2, PUBACK otherwise.
fn ack_packet(proto: Proto, t: &AckToken, out: &mut BytesMut) {
    if t.qos == 2 {
        proto.pubrec(t.pkid, out);
    } else {
        proto.puback(t.pkid, out);
    }
}

/// Write everything, or fail if the broker does not take it within `limit` (a peer that
/// stops reading must not hold the connection loop).
async fn write_within(write: &mut WriteHalf, bytes: &[u8], limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, send(write, bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("the broker took no data for {limit:?}")),
    }
}

/// Write everything and flush it (TLS holds written data until flushed).
async fn send(write: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    write.write_all(bytes).await?;
    write.flush().await
}

/// Say DISCONNECT (normal: the session stays) and close the write side.
async fn disconnect(proto: Proto, write: &mut WriteHalf) {
    let mut out = BytesMut::new();
    proto.disconnect(&mut out);
    let _ = write_within(write, &out, HANDSHAKE).await;
    let _ = write.shutdown().await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suback_refuses_failures_grants_below_qos_1_and_missing_answers() {
        let subs: Vec<String> = ["a/#", "b/#", "c/#", "d/#"].map(String::from).into();
        let granted = vec![Ok(1), Ok(0), Err("not authorized".to_owned())];
        let refused = refusals(&subs, &granted, false);
        assert_eq!(
            refused,
            vec![
                (
                    "b/#".into(),
                    "granted QoS 0, weir needs QoS 1 to acknowledge after Kafka".into()
                ),
                ("c/#".into(), "not authorized".into()),
                ("d/#".into(), "missing from the SUBACK".into()),
            ]
        );
        assert!(refusals(&subs[..1], &[Ok(2)], false).is_empty());
        // Exactly once needs every filter at QoS 2.
        assert!(refusals(&subs[..1], &[Ok(2)], true).is_empty());
        let refused = refusals(&subs[..1], &[Ok(1)], true);
        assert!(
            refused[0].1.contains("exactly_once needs QoS 2"),
            "{refused:?}"
        );
    }

    /// A session that fails before anyone waits on [`Source::failed`] (a TLS refusal at
    /// start-up can come before the lane's first poll) still stops weir.
    #[tokio::test]
    async fn a_failure_nobody_waited_for_yet_is_kept() {
        let cfg: Mqtt = toml::from_str("url = \"mqtt://127.0.0.1:1\"").unwrap();
        let metrics = Arc::new(Metrics::new());
        let group = metrics.group("default");
        let (source, _rx) = Source::prepare(&cfg, (metrics, group), None, None).unwrap();
        source.fail("refused".into());
        let why = tokio::time::timeout(Duration::from_secs(5), source.failed()).await;
        assert_eq!(why.as_deref(), Ok("refused"));
    }

    /// What a test reader's session loop would hold: the broker's end of the connection,
    /// the control channel nobody reads and the pause nobody sets (the loop is behind).
    type Behind = (
        tokio::io::DuplexStream,
        mpsc::Receiver<Control>,
        watch::Sender<bool>,
    );

    /// A reader of connection 1 (MQTT 5) of `link`'s session, with `wire` waiting to be
    /// read; the chunks it hands on come out of the receiver.
    async fn reader_over(
        wire: &[u8],
        link: &Arc<Link>,
        metrics: &Arc<Metrics>,
    ) -> (Reader, mpsc::Receiver<Chunk>, Behind) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(wire).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (control, control_rx) = mpsc::channel(16);
        let (pause_tx, pause) = watch::channel(false);
        let reader = Reader {
            read: Box::new(server),
            buf: BytesMut::new(),
            proto: Proto::V5,
            connection: 1,
            max_message_bytes: 1 << 20,
            tx,
            link: link.clone(),
            pause,
            control,
            metrics: metrics.clone(),
            last_read: Arc::new(AtomicU64::new(0)),
            waiting: Arc::new(AtomicBool::new(false)),
            clock: Clock(Instant::now()),
            pending: Vec::new(),
            arrived: (0, Instant::now()),
        };
        (reader, rx, (client, control_rx, pause_tx))
    }

    /// A broker may give a new message the packet id of one it just released (PUBREL),
    /// before weir's PUBCOMP, or even before that PUBREL (mosquitto, past 65,535 queued
    /// messages): the reader frees the id as it reads the PUBREL, however far behind the
    /// session's loop is, and only a PUBLISH with DUP under an id taken before this
    /// connection (MQTT 5) is a redelivery.
    #[tokio::test]
    async fn a_released_id_taken_again_is_a_new_message() {
        use rumqttc::v5::mqttbytes::{QoS, v5 as p5};
        let mut wire = BytesMut::new();
        let publish = |wire: &mut BytesMut, pkid: u16, dup: bool| {
            let mut p = p5::Publish::new("t/1", QoS::ExactlyOnce, b"x".to_vec(), None);
            p.pkid = pkid;
            p.dup = dup;
            p5::Packet::Publish(p).write(wire, None).unwrap();
        };
        publish(&mut wire, 7, false);
        wire.extend_from_slice(&[0x62, 0x02, 0x00, 0x07]);
        publish(&mut wire, 7, false);
        publish(&mut wire, 8, false);
        publish(&mut wire, 8, false);
        // MQTT 5 resends only on a later connection: DUP on this one is the broker's
        // confusion, written (at worst a duplicate, never a loss).
        publish(&mut wire, 8, true);
        // Committed before this process opened the session, redelivered with DUP.
        publish(&mut wire, 9, true);
        publish(&mut wire, 10, false);
        let metrics = Arc::new(Metrics::new());
        let (acks, _acks_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link::new(
            acks,
            None,
            true,
            Arc::new(Semaphore::new(16)),
            [metrics.in_flight.clone(), metrics.in_flight.clone()],
        ));
        let (mut reader, mut rx, _behind) = reader_over(&wire, &link, &metrics).await;
        link.qos2.lock().unwrap().extend([(9, 0), (10, 0)]);
        for _ in 0..8 {
            assert!(reader.next().await.unwrap());
        }
        reader.flush().await;
        let mut marked = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            marked.extend(chunk.iter().map(|m| (m.ack.pkid(), m.ack.duplicate())));
        }
        assert_eq!(
            marked,
            [
                (7, false),
                (7, false),
                (8, false),
                (8, false),
                (8, false),
                (9, true),
                (10, false)
            ]
        );
    }

    /// A message holds its place in weir (an in-flight permit, the gauges, its session's
    /// count) from its reading until its token goes, and gives it back once: alone when the
    /// token is dropped (its session ended), or in a run when the session acknowledges.
    #[tokio::test]
    async fn a_message_gives_its_place_back_once_however_its_token_goes() {
        use rumqttc::v5::mqttbytes::{QoS, v5 as p5};
        let mut wire = BytesMut::new();
        for pkid in 1..=5 {
            let mut p = p5::Publish::new("t/1", QoS::AtLeastOnce, b"x".to_vec(), None);
            p.pkid = pkid;
            p5::Packet::Publish(p).write(&mut wire, None).unwrap();
        }
        let metrics = Arc::new(Metrics::new());
        let group = metrics.group("default");
        let permits = Arc::new(Semaphore::new(8));
        let (acks, _acks_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link::new(
            acks,
            Some(0),
            false,
            permits.clone(),
            [metrics.in_flight.clone(), group.in_flight.clone()],
        ));
        let (mut reader, mut rx, _behind) = reader_over(&wire, &link, &metrics).await;
        for _ in 0..5 {
            assert!(reader.next().await.unwrap());
        }
        reader.flush().await;
        let mut tokens: Vec<AckToken> = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            tokens.extend(chunk.into_iter().map(|m| m.ack));
        }
        let held = |n: usize| {
            assert_eq!(permits.available_permits(), 8 - n, "permits");
            assert_eq!(metrics.in_flight.get(), n as i64, "weir_in_flight");
            assert_eq!(group.in_flight.get(), n as i64, "the group's in flight");
            assert_eq!(
                link.in_flight.load(Ordering::SeqCst),
                n as u32,
                "the session's"
            );
        };
        held(5);
        drop(tokens.pop());
        held(4);
        let mut seen = Vec::new();
        link.settle(&mut tokens, |t| seen.push(t.pkid()));
        assert_eq!(seen, [1, 2, 3, 4]);
        assert!(tokens.is_empty());
        held(0);
        link.settle(&mut tokens, |_| ());
        held(0);
    }

    #[test]
    fn urls_and_backoff() {
        assert_eq!(
            host_port("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884, false)
        );
        assert_eq!(
            host_port("mqtt://broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            host_port("mqtts://broker").unwrap(),
            ("broker".into(), 8883, true)
        );
        assert_eq!(
            host_port("mqtts://[::1]:8884").unwrap(),
            ("[::1]".into(), 8884, true)
        );
        assert_eq!(
            host_port("mqtts://[::1]").unwrap(),
            ("[::1]".into(), 8883, true)
        );
        assert!(host_port("ws://b:8883").is_err());
        assert!(host_port("mqtt://b:port").is_err());
        for n in 0..20 {
            let d = backoff(n);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(15_000),
                "{d:?}"
            );
        }
    }
}
