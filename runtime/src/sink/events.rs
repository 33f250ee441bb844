//! A Kafka producer whose events (delivery reports, statistics, logs, errors) one thread of
//! weir's reads, blocked in librdkafka until an event comes.
//!
//! rdkafka's `ThreadedProducer` (and the `FutureProducer` built on it) polls in a loop of
//! 100 ms deadlines and hands librdkafka the time left in whole milliseconds, rounded down:
//! for the last fraction of a millisecond of every deadline it polls with a zero timeout in
//! a tight loop, about 1 % of a core per producer, idle or busy. Here the thread waits in
//! `rd_kafka_queue_poll` with no deadline of its own, and is woken to stop by
//! `rd_kafka_queue_yield`. Delivery reports come a librdkafka event at a time, so the
//! context files each event's answers at once, with one lock and one wake-up.
//!
//! Writes go through librdkafka's handle of their topic, taken on the topic's first write
//! and kept ([`Producer::produce`]): rdkafka's `send` names the topic, for which librdkafka
//! takes the producer's write lock to look it up, on every write.

// Foreign calls: rdkafka 0.39 has no safe way to read a producer's event queue from a
// thread of one's own (its loop is the one this replaces), nor to write through a topic
// handle.
#![allow(unsafe_code)]

use rdkafka::ClientContext;
use rdkafka::bindings as rd;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Kafka's answer to one write, as librdkafka's delivery report gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The write's opaque (its tag).
    pub opaque: usize,
    /// Why it failed; `None` when Kafka took it.
    pub error: Option<RDKafkaErrorCode>,
    /// Where Kafka put it (−1 when it did not).
    pub offset: i64,
}

impl Report {
    /// The report in rdkafka's form, for the delivery callback rdkafka itself calls (from
    /// polls inside `flush` and on drop).
    pub fn of(result: &DeliveryResult<'_>, opaque: usize) -> Report {
        match result {
            Ok(m) => Report {
                opaque,
                error: None,
                offset: m.offset(),
            },
            Err((e, _)) => Report {
                opaque,
                error: Some(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
                offset: -1,
            },
        }
    }

    /// The failure as rdkafka names it.
    pub fn kafka_error(&self) -> Option<KafkaError> {
        self.error.map(KafkaError::MessageProduction)
    }
}

/// A producer context that takes delivery reports a batch at a time.
pub trait Reports: ProducerContext<DeliveryOpaque = usize> + 'static {
    /// Kafka's answers to some writes (never empty).
    fn reports(&self, reports: &[Report]);

    /// How long one write spent from its hand-off to librdkafka to its answer being read
    /// here: librdkafka's queue and linger, the request, the broker. Called for each write
    /// of a batch of answers, before [`Reports::reports`].
    fn answered_after(&self, _waited: Duration) {}
}

/// librdkafka's main queue of one client: where a producer's events arrive.
struct Queue(*mut rd::rd_kafka_queue_t);

// SAFETY: librdkafka's queues are thread-safe; the handle is a counted reference that stays
// valid until `rd_kafka_queue_destroy`, which only `Drop` calls.
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: the reference was taken by `rd_kafka_queue_get_main` and is released once.
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}

/// The event thread and what stops it.
struct Poller {
    stop: Arc<AtomicBool>,
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
    /// Why the thread ended while the producer lives (it panicked): no answer comes after.
    ended: Arc<OnceLock<String>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the queue is live (`self.queue`). A yield sent while the thread is not
        // waiting is kept, and ends its next wait at once.
        unsafe { rd::rd_kafka_queue_yield(self.queue.0) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `BaseProducer` with its own event thread. Clones share both; the last one to go stops
/// the thread, then drops the producer (which purges and flushes what is left).
pub struct Producer<C: Reports> {
    // Declared first so that it is dropped first: the thread stops before the producer goes.
    poller: Arc<Poller>,
    producer: Arc<Client<C>>,
}

/// librdkafka's `RD_KAFKA_PARTITION_UA` (a C macro): the partitioner picks the partition.
const PARTITION_UNASSIGNED: i32 = -1;

/// librdkafka's handle of one topic, taken once and kept for writes to it.
struct TopicHandle(*mut rd::rd_kafka_topic_t);

// SAFETY: librdkafka's topic handles are thread-safe and reference-counted; this one is
// released only by `Drop`, once. (Held in a `Mutex`, so `Send` is all it needs.)
unsafe impl Send for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_topic_new` and is released once.
        unsafe { rd::rd_kafka_topic_destroy(self.0) }
    }
}

/// The producer and the topic handles taken from it. The handles are declared first, so
/// that they are released before the producer is destroyed, as librdkafka requires.
struct Client<C: Reports> {
    topics: Mutex<Vec<(Box<str>, TopicHandle)>>,
    producer: BaseProducer<C>,
}

impl<C: Reports> Clone for Producer<C> {
    fn clone(&self) -> Self {
        Producer {
            poller: self.poller.clone(),
            producer: self.producer.clone(),
        }
    }
}

impl<C: Reports> std::ops::Deref for Producer<C> {
    type Target = BaseProducer<C>;
    fn deref(&self) -> &BaseProducer<C> {
        &self.producer.producer
    }
}

impl<C: Reports> Producer<C> {
    /// Start the event thread of `producer`, named `name` (at most 15 bytes show in `top`).
    pub fn start(producer: BaseProducer<C>, name: &str) -> std::io::Result<Producer<C>> {
        // SAFETY: the client is live for the call; the queue reference taken is ours.
        let queue = Arc::new(Queue(unsafe {
            rd::rd_kafka_queue_get_main(producer.client().native_ptr())
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(OnceLock::new());
        let context = producer.context().clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn({
            let (queue, stop, ended) = (queue.clone(), stop.clone(), ended.clone());
            move || {
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve(&queue, &stop, &*context)
                }));
                if let Err(panic) = served {
                    let _ = ended.set(format!("panicked ({})", crate::panic_message(&*panic)));
                }
            }
        })?;
        Ok(Producer {
            poller: Arc::new(Poller {
                stop,
                queue,
                thread: Some(thread),
                ended,
            }),
            producer: Arc::new(Client {
                topics: Mutex::new(Vec::new()),
                producer,
            }),
        })
    }

    /// Enqueue `w` (its value, key and headers are copied) to `partition`, or to the one
    /// its key hashes to; `opaque` comes back in its delivery report.
    ///
    /// Written through a topic handle kept for the topic: rdkafka's `send` names the topic,
    /// for which librdkafka takes the producer's write lock and looks the name up, and
    /// rdkafka copies the name to a C string first, for every write.
    pub fn produce(
        &self,
        w: &weir_core::write::Write,
        partition: Option<i32>,
        opaque: usize,
    ) -> Result<(), KafkaError> {
        let rkt = self.topic(&w.topic)?;
        let (key_ptr, key_len) = w
            .key
            .as_ref()
            .map_or((std::ptr::null(), 0), |k| (k.as_ptr(), k.len()));
        // SAFETY: the client and the topic handle (kept until the client goes) are live; the
        // header list is ours until librdkafka takes it, which it does only when the write
        // is enqueued; every pointer with its length is a live slice, copied during the call
        // (`F_COPY`, and `rd_kafka_header_add` copies name and value).
        let err = unsafe {
            let list = rd::rd_kafka_headers_new(w.headers.len());
            for (name, value) in w.headers.iter() {
                rd::rd_kafka_header_add(
                    list,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                );
            }
            let err = rd::rd_kafka_producev(
                self.producer.producer.client().native_ptr(),
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                rkt,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                partition.unwrap_or(PARTITION_UNASSIGNED),
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                rd::RD_KAFKA_MSG_F_COPY,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                w.value.as_ptr(),
                w.value.len(),
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key_ptr,
                key_len,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque as *mut std::ffi::c_void,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                list,
                rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            );
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                rd::rd_kafka_headers_destroy(list);
            }
            err
        };
        match err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
            e => Err(KafkaError::MessageProduction(e.into())),
        }
    }

    /// The handle of `topic`, taken on its first write.
    fn topic(&self, topic: &str) -> Result<*mut rd::rd_kafka_topic_t, KafkaError> {
        let mut topics = self
            .producer
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, h)) = topics.iter().find(|(name, _)| **name == *topic) {
            return Ok(h.0);
        }
        // A NUL cannot be passed (the config refuses such names): librdkafka's own code
        // for a bad argument, as it gives for a name it will not take.
        let name = std::ffi::CString::new(topic)
            .map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument))?;
        // SAFETY: the client is live and the name a C string; the handle taken is ours.
        let rkt = unsafe {
            rd::rd_kafka_topic_new(
                self.producer.producer.client().native_ptr(),
                name.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if rkt.is_null() {
            // SAFETY: reads the calling thread's last librdkafka error.
            let code = unsafe { rd::rd_kafka_last_error() };
            return Err(KafkaError::MessageProduction(code.into()));
        }
        topics.push((topic.into(), TopicHandle(rkt)));
        Ok(rkt)
    }

    /// Why the event thread ended, if it did while the producer lives: Kafka's answers are
    /// no longer read, so nothing this producer writes is answered again.
    pub fn events_ended(&self) -> Option<&str> {
        self.poller.ended.get().map(String::as_str)
    }
}

/// A context for writes that are each awaited (the control topic's, a few at a time).
#[derive(Default)]
pub struct Waiters {
    next: AtomicUsize,
    waiting: Mutex<HashMap<usize, tokio::sync::oneshot::Sender<Report>>>,
}

impl ClientContext for Waiters {}

impl ProducerContext for Waiters {
    type DeliveryOpaque = usize;

    /// Answers rdkafka itself reads (in a flush, and when the producer is dropped).
    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        self.reports(&[Report::of(result, id)]);
    }
}

impl Reports for Waiters {
    fn reports(&self, reports: &[Report]) {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in reports {
            if let Some(tx) = waiting.remove(&r.opaque) {
                let _ = tx.send(*r);
            }
        }
    }
}

/// What is written with [`Producer::write`].
pub struct Record<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub payload: &'a [u8],
    /// The headers.
    pub headers: OwnedHeaders,
}

/// Why a write through [`Producer::write`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Kafka or librdkafka refused it.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The producer's event thread ended: Kafka's answers are not read.
    #[error("the Kafka producer's event thread {0}; restart weir")]
    Events(String),
    /// No answer came in time.
    #[error("Kafka did not answer within {0:?}")]
    NoAnswer(Duration),
}

impl Producer<Waiters> {
    /// Write `record` and wait for Kafka's answer: the offset it took. The whole write,
    /// waiting for room in librdkafka's queue included, has `within` (longer than the
    /// producer's `message.timeout.ms`, which bounds librdkafka's own retries).
    pub async fn write(&self, record: Record<'_>, within: Duration) -> Result<i64, WriteError> {
        if let Some(why) = self.events_ended() {
            return Err(WriteError::Events(why.to_owned()));
        }
        let waiters = self.producer.producer.context();
        let id = waiters.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiters
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        // However the write ends (answered, refused, timed out, or the caller gone), its
        // waiter goes with it: a late answer finds no one.
        let _forget = Forget(waiters, id);
        let mut base: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(record.topic, id)
                .partition(record.partition)
                .key(record.key)
                .payload(record.payload)
                .headers(record.headers);
        let deadline = Instant::now() + within;
        loop {
            match self.producer.producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), b))
                    if Instant::now() < deadline =>
                {
                    base = b;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx).await {
            // The sender goes only with the producer: a write purged then is not answered.
            Ok(report) => {
                let report = report.map_err(|_| KafkaError::Canceled)?;
                match report.kafka_error() {
                    None => Ok(report.offset),
                    Some(e) => Err(e.into()),
                }
            }
            Err(_) => Err(match self.events_ended() {
                Some(why) => WriteError::Events(why.to_owned()),
                None => WriteError::NoAnswer(within),
            }),
        }
    }
}

/// Removes a write's waiter when dropped.
struct Forget<'a>(&'a Waiters, usize);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.1);
    }
}

/// How long one wait for an event lasts at most. Stopping does not wait for it (the queue
/// is yielded); it bounds how long a lost wake-up could go unnoticed.
const WAIT_MS: i32 = 1_000;

/// Read and dispatch events until told to stop.
fn serve<C: Reports>(queue: &Queue, stop: &AtomicBool, context: &C) {
    let mut batch = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: the queue is live while the thread runs (the poller joins it before the
        // last reference goes).
        let event = unsafe { rd::rd_kafka_queue_poll(queue.0, WAIT_MS) };
        if event.is_null() {
            continue;
        }
        // SAFETY: `event` is a live event, owned here until destroyed below.
        unsafe {
            dispatch(event, context, &mut batch);
            rd::rd_kafka_event_destroy(event);
        }
    }
}

/// Hand one event to the context, as rdkafka's own loop would.
///
/// # Safety
/// `event` must be a live event, not destroyed during the call.
unsafe fn dispatch<C: Reports>(
    event: *mut rd::rd_kafka_event_t,
    context: &C,
    batch: &mut Vec<Report>,
) {
    // SAFETY (the whole body): `event` is live; the pointers it hands out live as long as it.
    unsafe {
        match rd::rd_kafka_event_type(event) {
            rd::RD_KAFKA_EVENT_DR => {
                batch.clear();
                let mut m = rd::rd_kafka_event_message_next(event);
                while let Some(r) = m.as_ref() {
                    // Negative when librdkafka did not time the write.
                    if let Ok(us) = u64::try_from(rd::rd_kafka_message_latency(r)) {
                        context.answered_after(Duration::from_micros(us));
                    }
                    batch.push(Report {
                        opaque: r._private as usize,
                        error: (r.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
                            .then(|| r.err.into()),
                        offset: r.offset,
                    });
                    m = rd::rd_kafka_event_message_next(event);
                }
                if !batch.is_empty() {
                    context.reports(batch);
                }
            }
            rd::RD_KAFKA_EVENT_STATS => {
                let json = rd::rd_kafka_event_stats(event);
                if !json.is_null() {
                    context.stats_raw(CStr::from_ptr(json).to_bytes());
                }
            }
            rd::RD_KAFKA_EVENT_ERROR => {
                let code = rd::rd_kafka_event_error(event);
                let reason = text(rd::rd_kafka_event_error_string(event));
                context.error(KafkaError::Global(code.into()), reason.trim());
            }
            rd::RD_KAFKA_EVENT_LOG => {
                let (mut fac, mut message, mut level) = (std::ptr::null(), std::ptr::null(), 0);
                if rd::rd_kafka_event_log(event, &mut fac, &mut message, &mut level) == 0 {
                    context.log(log_level(level), text(fac).trim(), text(message).trim());
                }
            }
            // OAUTHBEARER token refreshes: weir's contexts do not make tokens (rdkafka's
            // loop drops them the same way).
            _ => {}
        }
    }
}

/// A C string librdkafka handed out, as text (empty when there is none).
///
/// # Safety
/// `s` is null or a NUL-terminated string that outlives the result.
unsafe fn text<'a>(s: *const std::ffi::c_char) -> std::borrow::Cow<'a, str> {
    if s.is_null() {
        return "".into();
    }
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(s) }.to_string_lossy()
}

/// librdkafka's syslog level as rdkafka's type.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_levels_map_to_rdkafka_levels() {
        assert!(matches!(log_level(3), RDKafkaLogLevel::Error));
        assert!(matches!(log_level(4), RDKafkaLogLevel::Warning));
        assert!(matches!(log_level(7), RDKafkaLogLevel::Debug));
        assert!(matches!(log_level(42), RDKafkaLogLevel::Debug));
    }
}
