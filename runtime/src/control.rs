//! The control topic (`[plugins] control_topic`, default `weir.control`): plugin uploads,
//! the pin of every cohort, and an audit entry for every change, in one single-partition
//! Kafka topic that keeps every record for good (`cleanup.policy=delete` with no retention
//! limit).
//!
//! Kafka is weir's shared state: every weir process reads the topic from the beginning at
//! start-up and follows it while it runs, so a restart keeps the promoted version and N
//! processes sharing a `$share` subscription converge on the same pin. One partition keeps
//! one order for every change.
//!
//! **Why not compacted.** Compaction keeps the newest record of each key whatever its
//! signature, so anyone who may write the topic could erase a signed pin or upload with an
//! unsigned record of the same key. Kept for good, every signed record stays, and the
//! readers skip what is not signed. The history is small (a pin and an audit entry per
//! change; a component once per sha256). A topic created compacted by an earlier weir is
//! still read (with a warning and the command that converts it); keys were chosen so that
//! compaction keeps what matters:
//!
//! | key                      | value                                   | kept            |
//! |--------------------------|-----------------------------------------|-----------------|
//! | `wasm/<sha256>`          | the component's bytes                   | one per sha256  |
//! | `wasm-part/<sha256>/<i>/<n>` | part i of n of a larger one (`parts`) | one per part   |
//! | `upload/<name>@<version>`| [`Upload`] (JSON)                       | one per version |
//! | `fixtures/<name>@<version>` | [`Fixtures`] (JSON)                  | the latest      |
//! | `pin/<cohort>`           | [`Pin`] (JSON)                          | the latest      |
//! | `audit/<cohort>/<unique>`| [`Audit`] (JSON)                        | all             |

//!
//! **Encoding.** Entry values are JSON objects carrying `"format"` ([`FORMAT`]), written by
//! [`encode`]. A value without it was written before the field existed and reads as format
//! 1; a value of a newer format is ignored (and logged), never half understood: a new
//! format is for changes older readers must not apply. Fields added within a format
//! default when missing, and unknown ones are skipped.

mod parts;

pub use parts::{Assembly, MAX_COMPONENT_BYTES, entries as component_entries};

use crate::config::Kafka;
use crate::credentials::PasswordFile;
use crate::sink::events::{Producer, Record, Waiters};
use crate::store::Store;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Errors reading or writing the control topic.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The signing keys of `[plugins]` cannot be used.
    #[error("{key}: {problem}")]
    Keys {
        /// The config key.
        key: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// Kafka refused or is unreachable.
    #[error("control topic {topic}: {problem}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What, and the fix.
        problem: String,
    },
}

/// A plugin version as pinned: what every record it produces is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Declared name.
    pub name: String,
    /// Declared version.
    pub version: String,
    /// sha256 of the component.
    pub sha256: String,
}

impl Version {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A stored plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Which version.
    #[serde(flatten)]
    pub plugin: Version,
    /// Size of the component, bytes.
    pub size: u64,
    /// Its declared Avro schema.
    pub schema: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The admin token's name, or `seed` for a file from `[plugins] dir`.
    pub by: String,
}

/// Fixtures pushed with a version: JSON-lines input and the outcomes expected (the
/// `weir transform` formats); the promote gate runs them with the cohort's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixtures {
    /// `name@version`.
    pub plugin: String,
    /// Input lines.
    pub input: String,
    /// Expected outcome lines, one per input line.
    pub expected: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The admin token's name.
    pub by: String,
}

/// Which version a cohort runs, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The cohort.
    pub cohort: String,
    /// The version it runs.
    pub plugin: Version,
    /// The version it ran before this pin.
    pub previous: Option<Version>,
    /// Earlier pins, oldest first: `rollback` returns to the last and drops it.
    #[serde(default)]
    pub rollback_to: Vec<Version>,
    /// The sha256 of the pin this one was decided against (none: the cohort had no pin).
    #[serde(default)]
    pub replaces: Option<String>,
    /// The pin's place in its cohort's chain: one more than the pin it replaces (the
    /// first is 1). A pin at or below the applied one's place is an earlier entry written
    /// again (a replay) and never applies. 0: written by a weir that does not count (an
    /// older binary in a rolling upgrade): unordered, it applies by `replaces` alone.
    #[serde(default)]
    pub seq: u64,
    /// When the pin was written, ms since the Unix epoch.
    pub at_ms: i64,
    /// The admin token's name.
    pub by: String,
    /// The name of the trusted key whose signature made this process apply it (`self`:
    /// this deployment's own key). Set from the signature as the entry is read, never
    /// taken from the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// Where a process switched a cohort to a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutover {
    /// The weir process (its MQTT client id).
    pub process: String,
    /// When its first message went through the new version, ms since the Unix epoch.
    pub at_ms: i64,
    /// That message's MQTT topic.
    pub first_topic: String,
}

/// What an audit entry records; written as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A version was stored.
    Push,
    /// A cohort was pinned to a version, through the gate.
    Promote,
    /// A cohort was pinned back to the version it ran before.
    Rollback,
    /// A process sent its first message through a cohort's new version.
    Cutover,
}

impl Action {
    /// The name the control topic and the admin API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Cutover => "cutover",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A control-topic key: which kind of entry a record is, and so what compaction keeps of
/// it (see the module's table). Written and read only through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `wasm/<sha256>`: a component's bytes.
    Wasm {
        /// The component's sha256.
        sha256: String,
    },
    /// `wasm-part/<sha256>/<index>/<count>`: part of a component too large for one record.
    WasmPart {
        /// The whole component's sha256.
        sha256: String,
        /// Which part, from 0.
        index: u32,
        /// How many parts the component has.
        count: u32,
    },
    /// `upload/<name>@<version>/<sha256>`: a claim on a version; the first by offset wins.
    Upload {
        /// `name@version`.
        plugin: String,
        /// The claimed component's sha256.
        sha256: String,
    },
    /// `fixtures/<name>@<version>`.
    Fixtures {
        /// `name@version`.
        plugin: String,
    },
    /// `pin/<cohort>`.
    Pin {
        /// The cohort.
        cohort: String,
    },
    /// `audit/<cohort or ->/<unique>`: one per change, all kept.
    Audit {
        /// The cohort (none for a push).
        cohort: Option<String>,
        /// Time and a random part, so that no two entries share a key.
        unique: String,
    },
}

impl Key {
    /// Read a key; `None` for one weir does not write (it is ignored).
    pub fn parse(key: &str) -> Option<Key> {
        let (kind, rest) = key.split_once('/')?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(match kind {
            "wasm" => Key::Wasm {
                sha256: non_empty(rest)?,
            },
            "wasm-part" => {
                let mut fields = rest.split('/');
                let (sha256, index, count) = (fields.next()?, fields.next()?, fields.next()?);
                if fields.next().is_some() {
                    return None;
                }
                Key::WasmPart {
                    sha256: non_empty(sha256)?,
                    index: index.parse().ok()?,
                    count: count.parse().ok()?,
                }
            }
            "upload" => {
                let (plugin, sha256) = rest.rsplit_once('/')?;
                Key::Upload {
                    plugin: non_empty(plugin)?,
                    sha256: non_empty(sha256)?,
                }
            }
            "fixtures" => Key::Fixtures {
                plugin: non_empty(rest)?,
            },
            "pin" => Key::Pin {
                cohort: non_empty(rest)?,
            },
            "audit" => {
                let (cohort, unique) = rest.rsplit_once('/')?;
                Key::Audit {
                    cohort: (cohort != "-").then(|| cohort.to_owned()),
                    unique: non_empty(unique)?,
                }
            }
            _ => return None,
        })
    }

    /// A fresh key for audit entry `a`.
    pub fn audit(a: &Audit) -> Key {
        Key::Audit {
            cohort: a.cohort.clone(),
            unique: format!("{}-{:016x}", a.at_ms, rand::random::<u64>()),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Wasm { sha256 } => write!(f, "wasm/{sha256}"),
            Key::WasmPart {
                sha256,
                index,
                count,
            } => write!(f, "wasm-part/{sha256}/{index}/{count}"),
            Key::Upload { plugin, sha256 } => write!(f, "upload/{plugin}/{sha256}"),
            Key::Fixtures { plugin } => write!(f, "fixtures/{plugin}"),
            Key::Pin { cohort } => write!(f, "pin/{cohort}"),
            Key::Audit { cohort, unique } => {
                write!(f, "audit/{}/{unique}", cohort.as_deref().unwrap_or("-"))
            }
        }
    }
}

/// One change, for `weir plugin history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// The cohort (none for a push).
    pub cohort: Option<String>,
    /// What changed.
    pub action: Action,
    /// The version pushed or pinned (`name@version`).
    pub plugin: String,
    /// The sha256 pinned before.
    pub old_sha256: Option<String>,
    /// The sha256 pushed or pinned.
    pub new_sha256: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The admin token's name (or the process, for a cutover).
    pub by: String,
    /// For `cutover`: where the process switched.
    pub cutover: Option<Cutover>,
    /// The name of the trusted key whose signature made this process apply it. Set from
    /// the signature as the entry is read, never taken from the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// The format of the entry values this weir writes, and the newest it reads.
pub const FORMAT: u64 = 1;

/// An entry's value as written to the control topic: its JSON with `"format"`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut json = serde_json::to_value(value).expect("control entries serialise");
    if let serde_json::Value::Object(fields) = &mut json {
        fields.insert("format".into(), FORMAT.into());
    }
    serde_json::to_vec(&json).expect("JSON serialises")
}

/// Why an entry's value was not read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// Written by a newer weir, in this format.
    Newer(u64),
    /// Not a valid entry of its kind.
    Invalid,
}

/// Read an entry's value written by [`encode`] (or before `format` existed).
fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, Unread> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        format: Option<u64>,
    }
    let head: Head = serde_json::from_slice(value).map_err(|_| Unread::Invalid)?;
    match head.format {
        Some(f) if f > FORMAT => Err(Unread::Newer(f)),
        _ => serde_json::from_slice(value).map_err(|_| Unread::Invalid),
    }
}

/// What the control topic says, as far as it has been read.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Stored versions by `name@version`.
    pub uploads: BTreeMap<String, Upload>,
    /// Fixtures by `name@version`.
    pub fixtures: BTreeMap<String, Fixtures>,
    /// Pins by cohort.
    pub pins: BTreeMap<String, Pin>,
    /// Every change, oldest first.
    pub audit: Vec<Audit>,
    /// The next offset to read: everything before it is applied.
    pub next_offset: i64,
    /// The changes whose pin applied, newest last (at most [`MAX_AUDIT_KEPT`]): of two
    /// concurrent changes only the one that won is in the history ([`State::happened`]).
    changes: std::collections::VecDeque<Change>,
    /// The changes whose pin was refused (lost to a concurrent change, or written again),
    /// newest last (at most [`MAX_AUDIT_KEPT`]).
    refused: std::collections::VecDeque<Change>,
}

/// A change by its pin: cohort, the version it pinned, when and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    cohort: String,
    sha256: String,
    at_ms: i64,
    by: String,
}

impl State {
    /// Whether the change an audit entry records took effect. A promote's or rollback's
    /// pin is written before its audit entry: the entry stands if its pin applied, and is
    /// dropped if its pin was refused (a concurrent change won). With neither (its pin
    /// compacted away in an older weir's topic), it stands.
    fn happened(&self, a: &Audit) -> bool {
        let (Action::Promote | Action::Rollback, Some(cohort)) = (a.action, &a.cohort) else {
            return true;
        };
        let is = |c: &&Change| {
            &c.cohort == cohort && c.sha256 == a.new_sha256 && c.at_ms == a.at_ms && c.by == a.by
        };
        self.changes.iter().rev().any(|c| is(&c)) || !self.refused.iter().rev().any(|c| is(&c))
    }

    /// Remember a change by its pin in `list` (bounded).
    fn remember(list: &mut std::collections::VecDeque<Change>, p: &Pin) {
        if list.len() >= MAX_AUDIT_KEPT {
            list.pop_front();
        }
        list.push_back(Change {
            cohort: p.cohort.clone(),
            sha256: p.plugin.sha256.clone(),
            at_ms: p.at_ms,
            by: p.by.clone(),
        });
    }

    /// Apply an entry admitted under `signer`'s signature (see [`admitted`]).
    fn apply(&mut self, key: &str, value: Option<&[u8]>, signer: Option<&str>) {
        let signer = signer.map(str::to_owned);
        let Some(value) = value else { return };
        let parsed = |what: &str, why: Unread| match why {
            Unread::Newer(format) => tracing::warn!(
                key,
                format,
                "control topic: ignoring a {what} written by a newer weir (format {format}; this one reads up to {FORMAT}): upgrade this process"
            ),
            Unread::Invalid => tracing::warn!(
                key,
                "control topic: ignoring an entry that is not a valid {what}"
            ),
        };
        match Key::parse(key) {
            Some(Key::Upload { .. }) => {
                // Keyed by name@version and sha256, so compaction keeps every claim and the
                // first one (by offset) wins in every process: a version is immutable.
                match decode::<Upload>(value) {
                    Ok(u) => {
                        self.uploads.entry(u.plugin.id()).or_insert(u);
                    }
                    Err(why) => parsed("upload", why),
                }
            }
            Some(Key::Fixtures { .. }) => match decode::<Fixtures>(value) {
                Ok(f) => {
                    self.fixtures.insert(f.plugin.clone(), f);
                }
                Err(why) => parsed("fixtures entry", why),
            },
            Some(Key::Pin { .. }) => match decode::<Pin>(value) {
                // A pin applies only over the pin it was decided against, so of two
                // concurrent promotes the first written wins, in every process alike.
                Ok(mut p) => match self.pins.get(&p.cohort) {
                    Some(current) if Some(&current.plugin.sha256) != p.replaces.as_ref() => {
                        tracing::warn!(cohort = %p.cohort, plugin = %p.plugin.id(), "control topic: a pin decided against an older pin lost to a concurrent change; ignored");
                        State::remember(&mut self.refused, &p);
                    }
                    Some(current) if p.seq != 0 && p.seq <= current.seq => {
                        tracing::warn!(cohort = %p.cohort, plugin = %p.plugin.id(), seq = p.seq, applied = current.seq, "control topic: an earlier pin written again (a replay); ignored");
                        State::remember(&mut self.refused, &p);
                    }
                    _ => {
                        State::remember(&mut self.changes, &p);
                        p.signer = signer;
                        self.pins.insert(p.cohort.clone(), p);
                    }
                },
                Err(why) => parsed("pin", why),
            },
            Some(Key::Audit { .. }) => match decode::<Audit>(value) {
                Ok(a) if !self.happened(&a) => {
                    tracing::warn!(cohort = ?a.cohort, plugin = %a.plugin, by = %a.by, "control topic: the audit entry of a change that lost to a concurrent one; ignored")
                }
                Ok(mut a) => {
                    a.signer = signer;
                    // Every entry stays in the topic; memory keeps the newest.
                    if self.audit.len() >= MAX_AUDIT_KEPT {
                        self.audit.drain(..self.audit.len() + 1 - MAX_AUDIT_KEPT);
                    }
                    self.audit.push(a);
                }
                Err(why) => parsed("audit entry", why),
            },
            // Components go to the store (`Components::take`); keys weir does not write
            // are someone else's.
            Some(Key::Wasm { .. } | Key::WasmPart { .. }) | None => {}
        }
    }
}

/// The control topic: a producer for changes and a follower that applies every entry.
pub struct Control {
    /// Keeps the producer's SASL password in step with its file (first: it lets go of its
    /// handle to the producer before `producer` is dropped).
    _password: Option<crate::credentials::Follower>,
    topic: String,
    producer: Producer<Waiters>,
    state: watch::Receiver<Arc<State>>,
    stop: Arc<AtomicBool>,
    signer: Arc<crate::signing::Signer>,
    /// Entries not applied for want of a trusted signature.
    rejected: prometheus_client::metrics::counter::Counter,
}

/// Whether an entry may be applied: components are named by their sha256 (and used only
/// through a signed upload or pin), everything else needs a trusted signature. Refusals
/// are counted, and the first few logged.
/// `None`: not to be applied; else the trusted key's name that signed it (none for what
/// needs no signature).
fn admitted(
    trust: &crate::signing::Trust,
    rejected: &prometheus_client::metrics::counter::Counter,
    key: &str,
    value: Option<&[u8]>,
    headers: Option<&rdkafka::message::BorrowedHeaders>,
) -> Option<Admitted> {
    use rdkafka::message::Headers as _;
    let (Some(parsed), Some(value)) = (Key::parse(key), value) else {
        return Some(Admitted { signer: None });
    };
    if matches!(parsed, Key::Wasm { .. } | Key::WasmPart { .. }) {
        return Some(Admitted { signer: None });
    }
    let header =
        |name: &str| headers.and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value));
    match trust.check(
        key,
        value,
        header(crate::signing::SIGNER_HEADER),
        header(crate::signing::SIGNATURE_HEADER),
    ) {
        Ok(name) => Some(Admitted {
            signer: Some(name.to_owned()),
        }),
        Err(why) => {
            let n = rejected.inc();
            if n < 10 || n.is_power_of_two() {
                tracing::warn!(key = %weir_core::untrusted::Untrusted(key), %why, refused = n + 1, "control topic: an entry is not applied");
            }
            None
        }
    }
}

/// An entry [`admitted`] to be applied.
struct Admitted {
    /// The trusted key's name that signed it.
    signer: Option<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The control topic's producer (idempotent, entries up to [`ENTRY_BYTES`]) and its reader,
/// assigned partition 0 from the beginning.
fn clients(base: ClientConfig, topic: &str) -> Result<(Producer<Waiters>, BaseConsumer), String> {
    let mut pc = base.clone();
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", ENTRY_BYTES.to_string())
        .set("linger.ms", "0");
    let producer: BaseProducer<Waiters> = pc
        .create_with_context(Waiters::default())
        .map_err(|e| format!("cannot create a producer: {e}"))?;
    let producer = Producer::start(producer, "weir-control-dr")
        .map_err(|e| format!("cannot start the producer's event thread: {e}"))?;
    let mut cc = base;
    cc.set(
        "group.id",
        format!("weir-control-{}", rand::random::<u64>()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("fetch.message.max.bytes", ENTRY_BYTES.to_string())
    .set("fetch.wait.max.ms", "100")
    // The end of the partition is reported, so that start-up knows it has read
    // everything even when the last offsets hold no record (transaction markers, a
    // compacted tail).
    .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cc
        .create()
        .map_err(|e| format!("cannot create a consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer
        .assign(&tpl)
        .map_err(|e| format!("cannot read partition 0: {e}"))?;
    Ok((producer, consumer))
}

/// The control topic's end offset. A topic just created, or a broker just started, has no
/// leader for a moment (unknown partition, not leader): ask again for up to 30 s.
fn end_offset(consumer: &BaseConsumer, topic: &str) -> Result<i64, String> {
    let asked = std::time::Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            Err(e) if asked.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "control topic: end offset not known yet; asking again");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(format!(
                    "cannot read its end offset: {e}; check kafka.bootstrap and that the brokers are up"
                ));
            }
        }
    }
}

/// Read the control topic from the beginning to its end (within 60 s): components go to
/// `store`, entries with a trusted signature make the state, the rest are counted.
fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    components: &mut Components,
    (trust, rejected): (
        &crate::signing::Trust,
        &prometheus_client::metrics::counter::Counter,
    ),
) -> Result<State, String> {
    let high = end_offset(consumer, topic)?;
    let mut state = State::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while state.next_offset < high {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "read only to offset {} of {high} in 60 s",
                state.next_offset
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                components.take(&key, m.payload());
                if let Some(a) = admitted(trust, rejected, &key, m.payload(), m.headers()) {
                    state.apply(&key, m.payload(), a.signer.as_deref());
                }
                state.next_offset = m.offset() + 1;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "control topic: read error; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            None => {}
        }
    }
    Ok(state)
}

impl Control {
    /// Create the topic if it is missing, read it to its end (so the state is complete
    /// before start-up goes on), then follow it on a thread of its own. Components found
    /// in it are written to `store`.
    pub async fn open(
        kafka: &Kafka,
        topic: &str,
        store: Store,
        keys: crate::signing::Keys,
    ) -> Result<Control, ControlError> {
        let err = |problem: String| ControlError::Kafka {
            topic: topic.to_owned(),
            problem,
        };
        let base = crate::capture::connection(kafka).map_err(|e| err(e.to_string()))?;
        ensure_topic(&base, topic).await.map_err(err)?;
        let (producer, consumer) = clients(base, topic).map_err(err)?;
        let topic_owned = topic.to_owned();
        let rejected = prometheus_client::metrics::counter::Counter::default();
        let (trust, rejected_c) = (keys.trust.clone(), rejected.clone());
        let (consumer, state, components) = tokio::task::spawn_blocking(move || {
            let mut components = Components {
                store,
                assembly: Assembly::default(),
            };
            let state = read_to_end(
                &consumer,
                &topic_owned,
                &mut components,
                (&trust, &rejected_c),
            )?;
            Ok((consumer, state, components))
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)?;
        tracing::info!(
            topic,
            uploads = state.uploads.len(),
            pins = state.pins.len(),
            entries = state.next_offset,
            "control topic read"
        );
        let (tx, rx) = watch::channel(Arc::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let stop_c = stop.clone();
        let password = PasswordFile::of(kafka, "the control topic's reader");
        let (trust, rejected_c) = (keys.trust.clone(), rejected.clone());
        std::thread::Builder::new()
            .name("weir-control".into())
            .spawn(move || {
                follow(
                    consumer,
                    password,
                    tx,
                    components,
                    stop_c,
                    (trust, rejected_c),
                )
            })
            .map_err(|e| err(e.to_string()))?;
        let follower = crate::credentials::follow(kafka, "the control topic's producer", {
            let producer = producer.clone();
            move |file| file.refresh(producer.client())
        })
        .map_err(err)?;
        tracing::info!(
            topic,
            signing_key = keys.signer.public(),
            "control topic: this process signs its entries with this key (other processes apply them if they list it in plugins.trusted_keys or share plugins.signing_key_file)"
        );
        Ok(Control {
            _password: follower,
            topic: topic.to_owned(),
            producer,
            state: rx,
            stop,
            signer: keys.signer,
            rejected,
        })
    }

    /// Entries not applied for want of a trusted signature, so far.
    pub fn rejected(&self) -> prometheus_client::metrics::counter::Counter {
        self.rejected.clone()
    }

    /// [`Control::open`] on the control topic and signing keys `config` names.
    pub async fn for_config(
        config: &crate::config::Config,
        store: Store,
    ) -> Result<Control, ControlError> {
        let keys =
            crate::signing::Keys::load(&config.plugins.signing_key(), &config.plugins.trusted_keys)
                .map_err(|(key, problem)| ControlError::Keys { key, problem })?;
        Control::open(&config.kafka, &config.plugins.control_topic, store, keys).await
    }

    /// The state as far as it has been read.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// Write entries, in order, and wait until this process has applied them.
    pub async fn append(&self, entries: Vec<(Key, Vec<u8>)>) -> Result<(), ControlError> {
        let mut last = -1;
        for (key, value) in entries {
            let key = key.to_string();
            let mut headers = rdkafka::message::OwnedHeaders::new();
            for (name, v) in self.signer.sign(&key, &value) {
                headers = headers.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(&v),
                });
            }
            let record = Record {
                topic: &self.topic,
                partition: 0,
                key: key.as_bytes(),
                payload: &value,
                headers,
            };
            last = self
                .producer
                .write(record, Duration::from_secs(45))
                .await
                .map_err(|e| ControlError::Kafka {
                    topic: self.topic.clone(),
                    problem: format!("cannot write {key}: {e}"),
                })?;
        }
        let mut rx = self.state.clone();
        let applied = rx.wait_for(|s| s.next_offset > last);
        tokio::time::timeout(Duration::from_secs(30), applied)
            .await
            .map_err(|_| ControlError::Kafka {
                topic: self.topic.clone(),
                problem: "written, but not read back within 30 s".into(),
            })?
            .map_err(|_| ControlError::Kafka {
                topic: self.topic.clone(),
                problem: "the follower stopped".into(),
            })?;
        Ok(())
    }

    /// Append an audit entry.
    pub async fn audit(&self, a: &Audit) -> Result<(), ControlError> {
        self.append(vec![(Key::audit(a), encode(a))]).await
    }
}

/// The control plane as the lifecycle sees it: the state read so far, its changes, and
/// appending entries. [`Control`] is the control topic; [`Memory`] keeps one in memory, so
/// that the lifecycle's decisions (pin races, convergence, cutover) are tested without a
/// broker.
pub trait Log: Send + Sync + 'static {
    /// The state as far as it has been read.
    fn state(&self) -> Arc<State>;
    /// A receiver that sees every new state.
    fn subscribe(&self) -> watch::Receiver<Arc<State>>;
    /// Write entries, in order, and wait until this process has applied them.
    fn append(
        &self,
        entries: Vec<(Key, Vec<u8>)>,
    ) -> futures::future::BoxFuture<'_, Result<(), ControlError>>;
    /// Entries not applied for want of a trusted signature, so far.
    fn rejected(&self) -> prometheus_client::metrics::counter::Counter;
    /// Append an audit entry.
    fn audit(&self, a: &Audit) -> futures::future::BoxFuture<'_, Result<(), ControlError>> {
        self.append(vec![(Key::audit(a), encode(a))])
    }
}

impl Log for Control {
    fn state(&self) -> Arc<State> {
        Control::state(self)
    }

    fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        Control::subscribe(self)
    }

    fn append(
        &self,
        entries: Vec<(Key, Vec<u8>)>,
    ) -> futures::future::BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(Control::append(self, entries))
    }

    fn rejected(&self) -> prometheus_client::metrics::counter::Counter {
        Control::rejected(self)
    }
}

/// A control log in memory, shared by the lifecycles of several simulated processes: an
/// entry is applied as the control topic's reader applies it (components to the store,
/// the rest to the state, in the order appended), signed by one trusted key.
pub struct Memory {
    state: watch::Sender<Arc<State>>,
    components: std::sync::Mutex<Components>,
}

impl Memory {
    /// An empty log whose components go to `store`.
    pub fn new(store: Store) -> Memory {
        Memory {
            state: watch::channel(Arc::new(State::default())).0,
            components: std::sync::Mutex::new(Components {
                store,
                assembly: Assembly::default(),
            }),
        }
    }
}

impl Log for Memory {
    fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.subscribe()
    }

    fn append(
        &self,
        entries: Vec<(Key, Vec<u8>)>,
    ) -> futures::future::BoxFuture<'_, Result<(), ControlError>> {
        let mut components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        self.state.send_modify(|state| {
            let mut next = State::clone(state);
            for (key, value) in entries {
                let key = key.to_string();
                components.take(&key, Some(&value));
                next.apply(&key, Some(&value), Some("memory"));
                next.next_offset += 1;
            }
            *state = Arc::new(next);
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn rejected(&self) -> prometheus_client::metrics::counter::Counter {
        prometheus_client::metrics::counter::Counter::default()
    }
}

fn follow(
    consumer: BaseConsumer,
    mut password: Option<PasswordFile>,
    tx: watch::Sender<Arc<State>>,
    mut components: Components,
    stop: Arc<AtomicBool>,
    (trust, rejected): (
        Arc<crate::signing::Trust>,
        prometheus_client::metrics::counter::Counter,
    ),
) {
    let mut refreshed = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(file) = &mut password
            && refreshed.elapsed() >= crate::credentials::INTERVAL
        {
            file.refresh(consumer.client());
            refreshed = std::time::Instant::now();
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let (payload, offset) = (m.payload().map(<[u8]>::to_vec), m.offset());
                components.take(&key, payload.as_deref());
                let apply = admitted(&trust, &rejected, &key, m.payload(), m.headers());
                tx.send_modify(|s| {
                    let s = Arc::make_mut(s);
                    if let Some(a) = &apply {
                        s.apply(&key, payload.as_deref(), a.signer.as_deref());
                    }
                    s.next_offset = offset + 1;
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "control topic: read error; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Where the control topic's components go: the store, through the assembly of the parts
/// of larger ones.
struct Components {
    store: Store,
    assembly: Assembly,
}

impl Components {
    /// A `wasm/<sha256>` entry, or the last part of a larger component, goes to the store
    /// (outside the state update: it is disk I/O).
    fn take(&mut self, key: &str, value: Option<&[u8]>) {
        let (Some(parsed), Some(value)) = (Key::parse(key), value) else {
            return;
        };
        let (sha, whole) = match parsed {
            Key::Wasm { sha256 } => (sha256, value.to_vec()),
            // A component already stored is not gathered again (a replayed part, a second
            // process seeding the same file, every start-up's read of the topic).
            Key::WasmPart { sha256, .. } if self.store.has(&sha256) => return,
            Key::WasmPart {
                sha256,
                index,
                count,
            } => match self.assembly.add(&sha256, index, count, value) {
                Some(whole) => (sha256, whole),
                None => return,
            },
            _ => return,
        };
        if let Err(e) = crate::transform::check_header(&whole) {
            tracing::warn!(key, error = %e, "control topic: a component entry is not a Wasm component; ignored");
            return;
        }
        match self.store.put(&whole) {
            Ok(got) if got == sha => {}
            Ok(got) => {
                tracing::warn!(key, sha256 = %got, "control topic: component bytes do not match their key; ignored")
            }
            Err(e) => tracing::error!(error = %e, "control topic: cannot store a component"),
        }
    }
}

/// Audit entries a process keeps in memory (the newest): the topic keeps every one.
pub const MAX_AUDIT_KEPT: usize = 10_000;

/// The largest control-topic record weir writes or reads (a component part with its key,
/// and room to spare), and the `max.message.bytes` it creates the topic with. Kafka's
/// default (1 MiB) would refuse a part.
const ENTRY_BYTES: usize = 4 << 20;

/// The least `max.message.bytes` an existing control topic may have.
const ENTRY_BYTES_NEEDED: usize = parts::PART_BYTES + (64 << 10);

/// Create the control topic (one partition, every record kept for good, records up to
/// [`ENTRY_BYTES`]) if it does not exist; refuse one that exists with settings that would
/// lose entries.
async fn ensure_topic(base: &ClientConfig, topic: &str) -> Result<(), String> {
    let max_bytes = ENTRY_BYTES.to_string();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "delete")
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("max.message.bytes", &max_bytes);
    let fix = format!(
        "create it with one partition, cleanup.policy=delete, retention.ms=-1, retention.bytes=-1 and max.message.bytes={ENTRY_BYTES}, or grant weir's principal CREATE on it"
    );
    crate::topics::ensure(base, new, &fix)
        .await
        .map_err(|e| e.to_string())?;
    let admin: AdminClient<DefaultClientContext> = base
        .create()
        .map_err(|e| format!("cannot create an admin client: {e}"))?;
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    check_settings(&admin, &options, topic).await
}

/// Check an existing control topic's settings with the broker: a principal that may not
/// describe them is warned about, not refused.
async fn check_settings(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &str,
) -> Result<(), String> {
    let described = tokio::time::timeout(
        Duration::from_secs(15),
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], options),
    )
    .await;
    let resource = match described {
        Ok(Ok(mut results)) if !results.is_empty() => results.remove(0),
        Ok(Ok(_)) => Err(RDKafkaErrorCode::Unknown),
        Ok(Err(e)) => Err(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown)),
        Err(_) => Err(RDKafkaErrorCode::RequestTimedOut),
    };
    let resource = match resource {
        Ok(r) => r,
        Err(code) => {
            tracing::warn!(topic, error = ?code, "cannot read the control topic's settings; make sure it keeps records for good (cleanup.policy=delete, retention.ms=-1, retention.bytes=-1) and has max.message.bytes of at least {ENTRY_BYTES_NEEDED}");
            return Ok(());
        }
    };
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    match settings_problem(
        topic,
        &Settings {
            policy: value("cleanup.policy"),
            retention_ms: value("retention.ms"),
            retention_bytes: value("retention.bytes"),
            max_bytes: value("max.message.bytes"),
        },
    ) {
        Verdict::Fine => Ok(()),
        Verdict::Warn(why) => {
            tracing::warn!(topic, "the control topic {why}");
            Ok(())
        }
        Verdict::Refuse(why) => Err(why),
    }
}

/// An existing control topic's settings, as the broker describes them.
#[derive(Debug, Default)]
struct Settings {
    policy: Option<String>,
    retention_ms: Option<String>,
    retention_bytes: Option<String>,
    max_bytes: Option<String>,
}

/// What weir makes of a control topic's settings.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// Usable, with a risk the operator should remove (and how).
    Warn(String),
    /// Kafka would lose entries: start-up stops with the fix.
    Refuse(String),
}

/// Judge a control topic's settings (an unknown value is not held against it).
fn settings_problem(topic: &str, s: &Settings) -> Verdict {
    let fix = |setting: &str| {
        format!(
            "kafka-configs --bootstrap-server <broker> --alter --entity-type topics --entity-name {topic} --add-config {setting}"
        )
    };
    let keep_for_good = "retention.ms=-1,retention.bytes=-1,cleanup.policy=delete";
    let unlimited = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().starts_with('-'));
    let policy = match s.policy.as_deref().map(str::trim) {
        None => Verdict::Fine,
        Some("compact") => Verdict::Warn(format!(
            "is compacted (an earlier weir created it so): compaction keeps the newest record of a key whatever its signature, so anyone who may write the topic can erase a signed pin or upload. Keep every record instead, in one command: {}",
            fix(keep_for_good)
        )),
        Some("delete") if unlimited(&s.retention_ms) && unlimited(&s.retention_bytes) => {
            Verdict::Fine
        }
        Some("delete") => {
            return Verdict::Refuse(format!(
                "has cleanup.policy=delete with retention.ms={} and retention.bytes={}, but weir keeps plugin versions, pins and history in it for good, and Kafka would drop them as they age: {}",
                s.retention_ms.as_deref().unwrap_or("?"),
                s.retention_bytes.as_deref().unwrap_or("?"),
                fix(keep_for_good)
            ));
        }
        Some(policy) => {
            return Verdict::Refuse(format!(
                "has cleanup.policy={policy}, but weir keeps plugin versions, pins and history in it for good, and Kafka would drop them: {}",
                fix(keep_for_good)
            ));
        }
    };
    if let Some(max) = s
        .max_bytes
        .as_deref()
        .and_then(|m| m.trim().parse::<usize>().ok())
        && max < ENTRY_BYTES_NEEDED
    {
        return Verdict::Refuse(format!(
            "has max.message.bytes={max}, too small for the {} bytes of a component (or of one part of a larger one) in one record: {}",
            parts::PART_BYTES,
            fix(&format!("max.message.bytes={ENTRY_BYTES}"))
        ));
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_entry_that_is_not_a_component_never_reaches_the_store() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut components = Components {
            store: store.clone(),
            assembly: Assembly::default(),
        };
        for junk in [&b"#!/bin/sh\nrm -rf /"[..], b"\0asm\x01\0\0\0core module"] {
            let sha = hex::encode(sha2::Sha256::digest(junk));
            components.take(&format!("wasm/{sha}"), Some(junk));
            assert_eq!(store.get(&sha).unwrap(), None);
        }
    }

    /// A large component arrives in parts; it is stored when its last part is read, and
    /// only if the whole matches its sha256.
    #[test]
    fn a_component_in_parts_is_stored_whole_once_every_part_is_read() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut components = Components {
            store: store.clone(),
            assembly: Assembly::default(),
        };
        // A component header followed by filler: what the store checks is the sha256.
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        bytes.resize(parts::PART_BYTES * 2 + 100, 7);
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        let entries = component_entries(&sha, &bytes);
        assert_eq!(entries.len(), 3);
        for (i, (key, value)) in entries.iter().enumerate() {
            assert_eq!(store.get(&sha).unwrap(), None, "stored before part {i}");
            components.take(&key.to_string(), Some(value));
        }
        assert_eq!(store.get(&sha).unwrap(), Some(bytes.clone()));
        // Parts that do not add up to their sha256 store nothing.
        let forged = "00".repeat(32);
        for (key, value) in component_entries(&forged, &bytes) {
            let Key::WasmPart { index, count, .. } = key else {
                panic!()
            };
            let key = Key::WasmPart {
                sha256: forged.clone(),
                index,
                count,
            };
            components.take(&key.to_string(), Some(&value));
        }
        assert_eq!(store.get(&forged).unwrap(), None);
    }

    /// Who signed an entry comes from the signature it was admitted under; a `signer` the
    /// entry itself claims is ignored.
    #[test]
    fn the_signer_comes_from_the_signature_not_the_entry() {
        let mut state = State::default();
        let a = Audit {
            cohort: Some("c".into()),
            action: Action::Push,
            plugin: "p@1".into(),
            old_sha256: None,
            new_sha256: "ab".into(),
            at_ms: 1,
            by: "ops".into(),
            cutover: None,
            signer: Some("ci-deploy".into()),
        };
        let key = Key::audit(&a).to_string();
        state.apply(&key, Some(&serde_json::to_vec(&a).unwrap()), Some("deploy"));
        assert_eq!(state.audit[0].signer.as_deref(), Some("deploy"));
        state.apply(&key, Some(&serde_json::to_vec(&a).unwrap()), None);
        assert_eq!(state.audit[1].signer, None);
    }

    /// Two promotes decided against the same pin are both written, each with its audit
    /// entry: the first pin wins, and only its change is in the history.
    #[test]
    fn the_history_holds_only_the_change_whose_pin_applied() {
        let v = |n: u8| Version {
            name: "t".into(),
            version: format!("1.{n}.0"),
            sha256: format!("{n:02x}"),
        };
        let change = |by: &str, at_ms: i64| {
            let pin = Pin {
                cohort: "c".into(),
                plugin: v(2),
                previous: Some(v(1)),
                rollback_to: vec![v(1)],
                replaces: Some(v(1).sha256),
                seq: 2,
                at_ms,
                by: by.into(),
                signer: None,
            };
            let audit = Audit {
                cohort: Some("c".into()),
                action: Action::Promote,
                plugin: v(2).id(),
                old_sha256: Some(v(1).sha256),
                new_sha256: v(2).sha256,
                at_ms,
                by: by.into(),
                cutover: None,
                signer: None,
            };
            [
                (Key::Pin { cohort: "c".into() }, encode(&pin)),
                (Key::audit(&audit), encode(&audit)),
            ]
        };
        let mut state = State::default();
        let first = Pin {
            cohort: "c".into(),
            plugin: v(1),
            previous: None,
            rollback_to: vec![],
            replaces: None,
            seq: 1,
            at_ms: 1,
            by: "ops".into(),
            signer: None,
        };
        let key = Key::Pin { cohort: "c".into() }.to_string();
        state.apply(&key, Some(&encode(&first)), Some("self"));
        let [pin_a, audit_a] = change("alice", 10);
        let [pin_b, audit_b] = change("bob", 11);
        let mut interleaved = state.clone();
        for (key, value) in [
            pin_a.clone(),
            audit_a.clone(),
            pin_b.clone(),
            audit_b.clone(),
        ] {
            state.apply(&key.to_string(), Some(&value), Some("self"));
        }
        assert_eq!(state.pins["c"].by, "alice");
        let by: Vec<&str> = state.audit.iter().map(|a| a.by.as_str()).collect();
        assert_eq!(by, ["alice"]);
        // Each entry is sent on its own, so the two changes may interleave.
        for (key, value) in [pin_a, pin_b, audit_b, audit_a] {
            interleaved.apply(&key.to_string(), Some(&value), Some("self"));
        }
        let by: Vec<&str> = interleaved.audit.iter().map(|a| a.by.as_str()).collect();
        assert_eq!(by, ["alice"]);
    }

    #[test]
    fn the_audit_kept_in_memory_is_the_newest_entries() {
        let mut state = State::default();
        for i in 0..MAX_AUDIT_KEPT + 5 {
            let a = Audit {
                cohort: None,
                action: Action::Push,
                plugin: format!("p@{i}"),
                old_sha256: None,
                new_sha256: "ab".into(),
                at_ms: i as i64,
                by: "ops".into(),
                cutover: None,
                signer: None,
            };
            state.apply(
                &Key::audit(&a).to_string(),
                Some(&serde_json::to_vec(&a).unwrap()),
                Some("self"),
            );
        }
        assert_eq!(state.audit.len(), MAX_AUDIT_KEPT);
        assert_eq!(state.audit[0].plugin, "p@5");
        assert_eq!(state.audit[0].signer.as_deref(), Some("self"));
        assert_eq!(
            state.audit.last().unwrap().plugin,
            format!("p@{}", MAX_AUDIT_KEPT + 4)
        );
    }

    #[test]
    fn keys_read_back_what_they_write_and_what_earlier_weirs_wrote() {
        let keys = [
            Key::Wasm {
                sha256: "ab12".into(),
            },
            Key::WasmPart {
                sha256: "ab12".into(),
                index: 3,
                count: 9,
            },
            Key::Upload {
                plugin: "thermostat@1.1.0".into(),
                sha256: "ab12".into(),
            },
            Key::Fixtures {
                plugin: "thermostat@1.1.0".into(),
            },
            Key::Pin {
                cohort: "thermostats".into(),
            },
            Key::Audit {
                cohort: Some("thermostats".into()),
                unique: "1700-00ff".into(),
            },
            Key::Audit {
                cohort: None,
                unique: "1700-00ff".into(),
            },
        ];
        for k in keys {
            assert_eq!(Key::parse(&k.to_string()), Some(k.clone()), "{k}");
        }
        // Keys as earlier versions wrote them with format!.
        assert_eq!(
            Key::parse("upload/meter@1.0.0/0123"),
            Some(Key::Upload {
                plugin: "meter@1.0.0".into(),
                sha256: "0123".into()
            })
        );
        assert_eq!(
            Key::parse("audit/-/1700000000000-0000000000000001"),
            Some(Key::Audit {
                cohort: None,
                unique: "1700000000000-0000000000000001".into()
            })
        );
        for foreign in [
            "",
            "pin",
            "pin/",
            "upload/x",
            "other/thing",
            "wasm/",
            "wasm-part/ab/1",
            "wasm-part/ab/x/2",
            "wasm-part//0/2",
            "wasm-part/ab/0/2/extra",
        ] {
            assert_eq!(Key::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn audit_actions_are_written_by_name_and_unknown_ones_refused() {
        let json = r#"{"cohort":"c","action":"rollback","plugin":"p@1","old_sha256":null,"new_sha256":"ab","at_ms":1,"by":"ops","cutover":null}"#;
        let a: Audit = serde_json::from_str(json).unwrap();
        assert_eq!(a.action, Action::Rollback);
        assert_eq!(serde_json::to_string(&a).unwrap(), json);
        assert!(serde_json::from_str::<Audit>(&json.replace("rollback", "delete")).is_err());
    }

    #[test]
    fn entries_carry_their_format_and_a_newer_one_is_not_applied() {
        let v = |n: u8| Version {
            name: "t".into(),
            version: format!("1.{n}.0"),
            sha256: format!("{n:02x}"),
        };
        let pin = |to: u8, replaces: Option<u8>| Pin {
            cohort: "c".into(),
            plugin: v(to),
            previous: replaces.map(v),
            rollback_to: vec![],
            replaces: replaces.map(|r| v(r).sha256),
            seq: u64::from(to),
            at_ms: 1,
            by: "ops".into(),
            signer: None,
        };
        let key = Key::Pin { cohort: "c".into() }.to_string();
        let written = encode(&pin(1, None));
        let json: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(json["format"], FORMAT);
        assert_eq!(decode::<Pin>(&written), Ok(pin(1, None)));

        let mut state = State::default();
        // Written before the field existed: read as it always was.
        state.apply(
            &key,
            Some(&serde_json::to_vec(&pin(1, None)).unwrap()),
            None,
        );
        assert_eq!(state.pins["c"], pin(1, None));
        // A newer format is left alone, whatever else it holds.
        let mut newer = serde_json::to_value(pin(2, Some(1))).unwrap();
        newer["format"] = (FORMAT + 1).into();
        let newer = serde_json::to_vec(&newer).unwrap();
        assert_eq!(decode::<Pin>(&newer), Err(Unread::Newer(FORMAT + 1)));
        state.apply(&key, Some(&newer), None);
        assert_eq!(state.pins["c"], pin(1, None));
        // This format applies.
        state.apply(&key, Some(&encode(&pin(2, Some(1)))), None);
        assert_eq!(state.pins["c"], pin(2, Some(1)));
        assert_eq!(decode::<Pin>(b"[1]"), Err(Unread::Invalid));
    }

    #[test]
    fn compaction_leaving_only_the_latest_pin_keeps_the_same_state() {
        let v = |n: u8| Version {
            name: "t".into(),
            version: format!("1.{n}.0"),
            sha256: format!("{n:02x}"),
        };
        let pin = |to: u8, replaces: Option<u8>, rollback_to: Vec<Version>, seq: u64| Pin {
            cohort: "c".into(),
            plugin: v(to),
            previous: replaces.map(v),
            rollback_to,
            replaces: replaces.map(|r| v(r).sha256),
            seq,
            at_ms: to as i64,
            by: "ops".into(),
            signer: None,
        };
        let entries = [
            pin(1, Some(0), vec![v(0)], 1),
            pin(0, Some(1), vec![], 2),
            pin(1, Some(0), vec![v(0)], 3),
        ];
        let key = Key::Pin { cohort: "c".into() }.to_string();
        let mut full = State::default();
        for p in &entries {
            full.apply(&key, Some(&serde_json::to_vec(p).unwrap()), None);
        }
        let mut compacted = State::default();
        compacted.apply(&key, Some(&serde_json::to_vec(&entries[2]).unwrap()), None);
        assert_eq!(full.pins, compacted.pins);
    }

    #[test]
    fn a_pin_written_again_later_does_not_apply_again() {
        let v = |n: u8| Version {
            name: "t".into(),
            version: format!("1.{n}.0"),
            sha256: format!("{n:02x}"),
        };
        let pin = |to: u8, from: u8, seq: u64| Pin {
            cohort: "c".into(),
            plugin: v(to),
            previous: Some(v(from)),
            rollback_to: vec![],
            replaces: Some(v(from).sha256),
            seq,
            at_ms: 0,
            by: "ops".into(),
            signer: None,
        };
        let key = Key::Pin { cohort: "c".into() }.to_string();
        let mut state = State::default();
        let first = pin(0, 9, 1);
        let to_b = pin(1, 0, 2);
        let back = pin(0, 1, 3);
        for p in [&first, &to_b, &back] {
            state.apply(&key, Some(&serde_json::to_vec(p).unwrap()), None);
        }
        assert_eq!(state.pins["c"], back);
        // Anyone who kept the signed "to 1.1.0" entry writes it again: it replaces what
        // runs now (1.0.0), but its place in the chain is behind.
        state.apply(&key, Some(&serde_json::to_vec(&to_b).unwrap()), None);
        assert_eq!(state.pins["c"], back, "a replayed pin was applied");
        // The next real change (place 4) applies.
        let next = pin(1, 0, 4);
        state.apply(&key, Some(&serde_json::to_vec(&next).unwrap()), None);
        assert_eq!(state.pins["c"], next);
        // A pin from an older weir (no place) still applies over a counted one: a rolling
        // upgrade must not split the fleet.
        let legacy = pin(0, 1, 0);
        state.apply(&key, Some(&serde_json::to_vec(&legacy).unwrap()), None);
        assert_eq!(state.pins["c"], legacy);
        // Pins from before the chain was counted still follow each other.
        let mut old = State::default();
        for p in [pin(0, 9, 0), pin(1, 0, 0), pin(0, 1, 0)] {
            old.apply(&key, Some(&serde_json::to_vec(&p).unwrap()), None);
        }
        assert_eq!(old.pins["c"].plugin, v(0));
    }

    #[test]
    fn a_control_topic_that_would_lose_entries_is_refused_with_the_fix() {
        let ok = Some(ENTRY_BYTES.to_string());
        let settings = |policy: &str, ms: &str, bytes: &str, max: Option<String>| Settings {
            policy: Some(policy.into()),
            retention_ms: Some(ms.into()),
            retention_bytes: Some(bytes.into()),
            max_bytes: max,
        };
        let refused = |v: Verdict| match v {
            Verdict::Refuse(why) => why,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            settings_problem("c", &settings("delete", "-1", "-1", ok.clone())),
            Verdict::Fine
        );
        assert_eq!(
            settings_problem("c", &Settings::default()),
            Verdict::Fine,
            "unknown is not held"
        );
        // Compacted (as earlier weirs made it): read, with the conversion.
        let Verdict::Warn(why) =
            settings_problem("c", &settings("compact", "604800000", "-1", ok.clone()))
        else {
            panic!("a compacted topic is usable");
        };
        assert!(
            why.contains("erase a signed pin")
                && why.contains(
                    "--add-config retention.ms=-1,retention.bytes=-1,cleanup.policy=delete"
                ),
            "{why}"
        );
        // Records that age out: refused.
        let why = refused(settings_problem(
            "c",
            &settings("delete", "604800000", "-1", ok.clone()),
        ));
        assert!(
            why.contains("retention.ms=604800000") && why.contains("retention.ms=-1"),
            "{why}"
        );
        let why = refused(settings_problem(
            "c",
            &settings("delete", "-1", "1073741824", ok.clone()),
        ));
        assert!(why.contains("retention.bytes=1073741824"), "{why}");
        let why = refused(settings_problem(
            "c",
            &settings("compact,delete", "-1", "-1", ok.clone()),
        ));
        assert!(why.contains("compact,delete"), "{why}");
        let why = refused(settings_problem(
            "c",
            &settings("delete", "-1", "-1", Some("1048588".into())),
        ));
        assert!(
            why.contains("max.message.bytes=1048588")
                && why.contains(&format!("max.message.bytes={ENTRY_BYTES}")),
            "{why}"
        );
    }
}
