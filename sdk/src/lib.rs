//! Write weir transform plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`]: it is built once per instance from the
//! cohort's config and turns one [`Message`] into typed records (anything `Serialize` that
//! matches the plugin's Avro schema) or a [`Rejection`]. [`export_plugin!`] generates the
//! `weir:transform` glue: `describe` returns the name, version and schema, `init` builds the
//! plugin, `process-framed` runs the batch. The batch and its outcomes cross the boundary as
//! one buffer each, records as MessagePack (contract 1.2's `framed-plugin` world: no number
//! formatting in the plugin, no text parsing in the host, no call into the plugin's
//! allocator per field); the host validates every record against the schema.
//!
//! ```ignore
//! struct Echo;
//! #[derive(serde::Serialize)]
//! struct Line<'m> { text: &'m str }
//! impl weir_sdk::Plugin for Echo {
//!     type Record<'m> = Line<'m>;
//!     fn init(_: &weir_sdk::Config) -> Result<Self, String> { Ok(Echo) }
//!     fn transform<'m>(&'m self, msg: &'m weir_sdk::Message) -> weir_sdk::Result<Line<'m>> {
//!         Ok(weir_sdk::Emit::one(Line { text: msg.payload_str()? }))
//!     }
//! }
//! weir_sdk::export_plugin!(Echo, schema = "../line.avsc");
//! ```
//!
//! Natively (`cargo test`), the host import `log` is replaced by a stub that records lines
//! for [`testing::take_logs`], so plugin logic is unit-tested without Wasm.

use serde::Serialize;
use std::fmt;

/// The `weir:transform` bindings generated from `wit/transform.wit`.
#[doc(hidden)]
#[allow(unsafe_code)] // The generated canonical-ABI glue reads and writes guest memory.
pub mod bindings {
    wit_bindgen::generate!({
        world: "framed-plugin",
        path: "../wit",
        default_bindings_module: "weir_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_world",
    });
}

/// The `packed-plugin` world (contract 1.1), kept so that a plugin can still be built against
/// it: the host's 1.1 path is tested with one.
#[doc(hidden)]
#[allow(unsafe_code)] // The generated canonical-ABI glue reads and writes guest memory.
pub mod packed_bindings {
    wit_bindgen::generate!({
        world: "packed-plugin",
        path: "../wit",
        default_bindings_module: "weir_sdk::packed_bindings",
        pub_export_macro: true,
        export_macro_name: "__export_packed_world",
        with: {
            "weir:transform/types@1.2.0": crate::bindings::weir::transform::types,
            "weir:transform/host@1.2.0": crate::bindings::weir::transform::host,
        },
    });
}

pub mod codes;
pub mod dryrun;
pub mod frame;
mod json;
pub mod testing;

use bindings::weir::transform::types as wit;

/// Log severities, as in the contract.
pub use wit::Level;

/// The result of transforming one message: records to publish, or a rejection.
pub type Result<R> = std::result::Result<Emit<R>, Rejection>;

/// One MQTT message as delivered to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The MQTT topic.
    pub topic: String,
    /// The payload bytes, untouched.
    pub payload: Vec<u8>,
    /// MQTT v5 user properties, in order.
    pub properties: Vec<(String, String)>,
    /// The MQTT v5 content type, if set.
    pub content_type: Option<String>,
    /// When weir received it (ms since the Unix epoch), fixed for replay.
    pub received_at_ms: i64,
}

impl Message {
    /// A message with just a topic and payload, the rest empty: handy in tests.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            properties: Vec::new(),
            content_type: None,
            received_at_ms: 0,
        }
    }

    /// The `index`-th level of the topic (0-based), e.g. level 1 of `fleet/v-17/gps` is `v-17`.
    pub fn topic_level(&self, index: usize) -> Option<&str> {
        self.topic.split('/').nth(index)
    }

    /// The topic's last level, e.g. `t-100` of `plant/7/thermostat/t-100` (empty when the
    /// topic ends in `/`; the whole topic when it has one level). Where a device's id ends
    /// its topic, this finds it from the end, eight bytes at a time: in the sandbox a loop
    /// pays an interruption check per turn, and a general reverse search is set up for
    /// long text.
    #[inline]
    pub fn last_topic_level(&self) -> &str {
        const ONES: u64 = u64::MAX / 255;
        const LOW7: u64 = ONES * 0x7f;
        let bytes = self.topic.as_bytes();
        let mut end = bytes.len();
        while let Some(word) = end
            .checked_sub(8)
            .and_then(|at| bytes.get(at..end))
            .and_then(<[u8]>::first_chunk::<8>)
        {
            // Each byte's high bit set exactly where it is `/` (no borrow crosses bytes).
            let x = u64::from_le_bytes(*word) ^ (ONES * u64::from(b'/'));
            let slash = !(((x & LOW7) + LOW7) | x | LOW7);
            if slash != 0 {
                let last = 7 - slash.leading_zeros() as usize / 8;
                // `/` is ASCII, so the cut after it is a character boundary.
                return &self.topic[end - 8 + last + 1..];
            }
            end -= 8;
        }
        let start = bytes[..end]
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(0, |i| i + 1);
        &self.topic[start..]
    }

    /// The first user property called `name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The payload as UTF-8 text, or a `payload.encoding` rejection.
    pub fn payload_str(&self) -> std::result::Result<&str, Rejection> {
        text(&self.payload).map_err(|e| {
            Rejection::new(
                "payload.encoding",
                format!("payload is not UTF-8 text: {e}"),
            )
        })
    }

    /// The payload parsed as JSON into `T`, or a `payload.malformed` rejection naming the
    /// position and cause (bad syntax, or valid JSON of the wrong shape). The value and the
    /// error are serde_json's: the SDK reads the common case faster itself and hands
    /// serde_json whatever it is not sure of.
    pub fn json<'a, T: serde::Deserialize<'a>>(&'a self) -> std::result::Result<T, Rejection> {
        // The common case is read by the SDK's own reader, which checks the payload's UTF-8
        // as it goes (see `json.rs`). Whatever it is not sure of, serde_json reads again
        // and answers, from the payload checked whole first (refused here if it is not
        // UTF-8): parsing from text then skips serde_json's check of every string.
        if let Some(value) = json::from_slice(&self.payload) {
            return Ok(value);
        }
        let text = text(&self.payload).map_err(|e| {
            Rejection::new(
                "payload.malformed",
                format!("payload is not valid JSON: it is not UTF-8 text ({e})"),
            )
        })?;
        serde_json::from_str(text).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "payload JSON has the wrong shape",
                _ => "payload is not valid JSON",
            };
            Rejection::new("payload.malformed", format!("{what}: {e}"))
        })
    }
}

/// `bytes` as UTF-8 text. Payloads are mostly ASCII, so whole 32-byte blocks of it are
/// passed by four 64-bit tests each, and an ASCII rest by one test per word and byte; only
/// text with other characters goes through `std::str::from_utf8`, whose word is 32 bits in
/// Wasm and whose set-up alone costs a plugin about 300 instructions per call.
#[allow(unsafe_code)] // The whole is UTF-8 without a second pass over it: see SAFETY below.
fn text(bytes: &[u8]) -> std::result::Result<&str, std::str::Utf8Error> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let high =
        |words: &[[u8; 8]]| words.iter().fold(0, |all, w| all | u64::from_ne_bytes(*w)) & HIGH;
    let mut ascii = 0;
    for block in bytes.as_chunks::<32>().0 {
        if high(block.as_chunks::<8>().0) != 0 {
            break;
        }
        ascii += 32;
    }
    let rest = &bytes[ascii..];
    let (words, tail) = rest.as_chunks::<8>();
    let rest_is_ascii = high(words) == 0 && tail.is_ascii();
    if rest_is_ascii || std::str::from_utf8(rest).is_ok() {
        // SAFETY: `bytes[..ascii]` is ASCII (no byte has its high bit set) and
        // `bytes[ascii..]` is ASCII or UTF-8; ASCII ends on a character boundary, so the two
        // together are UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        // Checked whole again, so that the error's position counts from the start.
        std::str::from_utf8(bytes)
    }
}

/// A message the plugin refuses, with a stable dotted code and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code, e.g. `reading.out-of-range`.
    pub code: String,
    /// What was wrong with this message.
    pub reason: String,
}

impl Rejection {
    /// A rejection with the given code and reason.
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// One output record: a value of the plugin's record type, an optional key and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<R> {
    /// Kafka key; `None` leaves it to the cohort's key template.
    pub key: Option<String>,
    /// The record value, serialised (as MessagePack) and validated against the schema by the
    /// host. Its serde form is what counts, as for JSON: a struct is a record, `Option` a
    /// nullable union, a unit enum variant an enum symbol.
    pub value: R,
    /// Extra Kafka headers (names starting with `weir.` are reserved).
    pub headers: Vec<(String, String)>,
}

impl<R> From<R> for Record<R> {
    fn from(value: R) -> Self {
        Record {
            key: None,
            value,
            headers: Vec::new(),
        }
    }
}

impl<R> Record<R> {
    /// Set the Kafka key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a Kafka header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The records one message produces. One, the common case, is held in place: a list of its
/// own would cost an allocation per message, and inside Wasm that is dearer than most of
/// what a plugin does with the message.
pub type Records<R> = smallvec::SmallVec<[Record<R>; 1]>;

/// What a valid message produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit<R> {
    /// Records to publish (may be empty).
    Records(Records<R>),
    /// Nothing to publish, and nothing wrong (a heartbeat, say).
    Skip,
}

impl<R> Emit<R> {
    /// Exactly one record.
    pub fn one(record: impl Into<Record<R>>) -> Self {
        Emit::Records(smallvec::smallvec![record.into()])
    }

    /// Any number of records.
    pub fn many<I: IntoIterator<Item = T>, T: Into<Record<R>>>(records: I) -> Self {
        Emit::Records(records.into_iter().map(Into::into).collect())
    }
}

/// The cohort's plugin config: the `config` table of weir.toml, as key/value strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config(Vec<(String, String)>);

impl Config {
    /// Wrap key/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config(pairs)
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, `default` when absent, or an error naming the key.
    pub fn parse_or<T: std::str::FromStr>(
        &self,
        key: &str,
        default: T,
    ) -> std::result::Result<T, String>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| format!("config key `{key}` = {v:?} is invalid: {e}")),
        }
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// A transform: one instance per Wasm instance, built from the cohort's config.
pub trait Plugin: Sized {
    /// The record type; its serde form (as JSON shows it) must match the plugin's Avro
    /// schema. It may borrow from the message and the plugin (`'m`): text taken from the
    /// topic, the payload or the config as `&'m str` or `Cow<'m, str>` costs no copy, and
    /// inside Wasm a copy (an allocation) is the dearest part of a small record. A record
    /// that owns its data ignores `'m`: `type Record<'m> = Reading;`.
    type Record<'m>: Serialize
    where
        Self: 'm;

    /// Build an instance from the cohort's config; an error refuses the config.
    fn init(config: &Config) -> std::result::Result<Self, String>;

    /// Transform one message.
    fn transform<'m>(&'m self, message: &'m Message) -> Result<Self::Record<'m>>;
}

/// Write a line to weir's log. Natively, the line is kept for [`testing::take_logs`].
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::weir::transform::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    testing::record_log(level, message);
}

/// Report panics through `log` before the instance traps, so the host can say why.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(Level::Error, &format!("plugin panicked: {info}"));
        }))
    });
}

/// The glue behind [`export_plugin!`]; not for direct use.
#[doc(hidden)]
pub mod glue {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
    }

    /// Build the plugin from the config and keep it for `process`.
    pub fn init<P: Plugin + 'static>(
        config: Vec<(String, String)>,
    ) -> std::result::Result<(), String> {
        install_panic_hook();
        let plugin = P::init(&Config::new(config))?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    /// The plugin built by `init` (built with an empty config if the host did not call
    /// `init`), given to `f`; or why none can be built.
    fn with_plugin<P: Plugin + 'static, T>(
        f: impl FnOnce(&P) -> T,
    ) -> std::result::Result<T, Rejection> {
        install_panic_hook();
        let missing = INSTANCE.with(|slot| slot.borrow().is_none());
        if missing && let Err(e) = init::<P>(Vec::new()) {
            return Err(Rejection::new(
                "plugin.config",
                format!("plugin was not initialised and the empty config is refused: {e}"),
            ));
        }
        Ok(INSTANCE.with(|slot| {
            let slot = slot.borrow();
            let plugin = slot
                .as_ref()
                .and_then(|p| p.downcast_ref::<P>())
                .expect("the instance slot holds this plugin type");
            f(plugin)
        }))
    }

    /// Run a framed batch (contract 1.2) through the plugin; its framed outcomes. A batch
    /// that is not well framed is the host's fault, not a message's: the call traps, naming
    /// the place.
    pub fn process_framed<P: Plugin + 'static>(batch: &[u8]) -> Vec<u8> {
        let mut reader = frame::Reader::new(batch);
        let n = reader
            .u32("message count")
            .unwrap_or_else(|e| panic!("weir sent a malformed batch: {e}"));
        // Grown as needed: a batch of large payloads may have small outcomes, and the
        // plugin's memory cap counts both.
        let mut out = Vec::with_capacity(4 + (n as usize).saturating_mul(64).min(batch.len()));
        frame::put_len(&mut out, n as usize);
        let done = with_plugin::<P, _>(|plugin| {
            // One message, refilled for each of the batch: its buffers are reused, so a
            // message costs no allocation of its own (but for properties, which are rare).
            let mut m = Message::new(String::new(), Vec::new());
            for _ in 0..n {
                let next = reader
                    .message()
                    .unwrap_or_else(|e| panic!("weir sent a malformed batch: {e}"));
                refill(&mut m, next);
                put_outcome(&mut out, plugin.transform(&m));
            }
        });
        if let Err(r) = done {
            for _ in 0..n {
                frame::put_reject(&mut out, &r.code, &r.reason);
            }
        }
        out
    }

    /// Make `m` the message `next`, reusing its buffers.
    fn refill(m: &mut Message, next: frame::MessageRef<'_>) {
        m.topic.clear();
        m.topic.push_str(next.topic);
        m.payload.clear();
        m.payload.extend_from_slice(next.payload);
        m.properties.clear();
        m.properties.extend(
            next.properties
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        match (&mut m.content_type, next.content_type) {
            (Some(held), Some(new)) => {
                held.clear();
                held.push_str(new);
            }
            (held, new) => *held = new.map(str::to_owned),
        }
        m.received_at_ms = next.received_at_ms;
    }

    /// Append one message's result to framed outcomes; a value that cannot be serialised
    /// becomes a `record.serialize` rejection rather than a trap.
    pub fn put_outcome<R: Serialize>(out: &mut Vec<u8>, result: Result<R>) {
        match result {
            Err(r) => frame::put_reject(out, &r.code, &r.reason),
            Ok(Emit::Skip) => frame::put_skip(out),
            Ok(Emit::Records(records)) => {
                let start = out.len();
                frame::put_emit(out, records.len());
                for r in &records {
                    let packed = frame::put_record(
                        out,
                        r.key.as_deref(),
                        |buf| pack_into(&r.value, buf),
                        &r.headers,
                    );
                    if let Err(e) = packed {
                        out.truncate(start);
                        frame::put_reject(
                            out,
                            "record.serialize",
                            &format!("record could not be serialised: {e}"),
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Run a batch through the plugin, contract 1.1's way (`packed-plugin`).
    pub fn process_packed<P: Plugin + 'static>(
        batch: Vec<wit::Message>,
    ) -> Vec<wit::PackedOutcome> {
        let n = batch.len();
        let done = with_plugin::<P, _>(|plugin| {
            batch
                .into_iter()
                .map(|m| {
                    let m = Message {
                        topic: m.topic,
                        payload: m.payload,
                        properties: m.properties,
                        content_type: m.content_type,
                        received_at_ms: m.received_at_ms,
                    };
                    to_wit(plugin.transform(&m))
                })
                .collect()
        });
        done.unwrap_or_else(|r| {
            let rejection = wit::Rejection {
                code: r.code,
                reason: r.reason,
            };
            vec![wit::PackedOutcome::Reject(rejection); n]
        })
    }

    /// Describe the plugin.
    pub fn describe(name: &str, version: &str, schema: &str) -> wit::PluginInfo {
        wit::PluginInfo {
            name: name.into(),
            version: version.into(),
            schema: schema.into(),
        }
    }

    /// One message's result as contract 1.1 carries it: each record's value packed as
    /// MessagePack (structs as maps keyed by field name), which the host checks against
    /// the schema and encodes to Avro; a value that cannot be serialised becomes a
    /// `record.serialize` rejection rather than a trap.
    pub fn to_wit<R: Serialize>(result: Result<R>) -> wit::PackedOutcome {
        match result {
            Err(r) => wit::PackedOutcome::Reject(wit::Rejection {
                code: r.code,
                reason: r.reason,
            }),
            Ok(Emit::Skip) => wit::PackedOutcome::Skip,
            Ok(Emit::Records(records)) => {
                let mut out = Vec::with_capacity(records.len());
                for r in records {
                    match pack(&r.value) {
                        Ok(value) => out.push(wit::PackedRecord {
                            key: r.key,
                            value,
                            headers: r.headers,
                        }),
                        Err(e) => {
                            return wit::PackedOutcome::Reject(wit::Rejection {
                                code: "record.serialize".into(),
                                reason: format!("record could not be serialised: {e}"),
                            });
                        }
                    }
                }
                wit::PackedOutcome::Emit(out)
            }
        }
    }

    /// A record value as MessagePack, structs as maps keyed by field name.
    pub fn pack<R: Serialize>(value: &R) -> std::result::Result<Vec<u8>, rmp_serde::encode::Error> {
        let mut out = Vec::with_capacity(128);
        pack_into(value, &mut out)?;
        Ok(out)
    }

    /// [`pack`], appending to `out`.
    pub fn pack_into<R: Serialize>(
        value: &R,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), rmp_serde::encode::Error> {
        value.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
    }
}

/// Export a [`Plugin`] as the `weir:transform` `framed-plugin` world.
///
/// `schema` is the path of the `.avsc` file, relative to the file that invokes the macro (as
/// for `include_str!`). The name and version are the crate's `Cargo.toml` name and version;
/// `version = "..."` overrides the version, for a crate that builds several versions of one
/// plugin behind cargo features (see `plugins/thermostat`).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty, schema = $schema:literal) => {
        $crate::export_plugin!($plugin, schema = $schema, version = env!("CARGO_PKG_VERSION"));
    };
    ($plugin:ty, schema = $schema:literal, version = $version:expr) => {
        /// The Avro schema this plugin declares.
        pub const SCHEMA: &str = include_str!($schema);

        #[doc(hidden)]
        #[allow(unsafe_code)] // The contract's exported entry points are generated `extern` fns.
        mod __weir_export {
            use super::*;

            struct Export;

            impl $crate::bindings::Guest for Export {
                fn describe() -> $crate::bindings::weir::transform::types::PluginInfo {
                    $crate::glue::describe(
                        env!("CARGO_PKG_NAME"),
                        $version,
                        super::SCHEMA,
                    )
                }
                fn init(config: Vec<(String, String)>) -> Result<(), String> {
                    $crate::glue::init::<$plugin>(config)
                }
                fn process_framed(batch: Vec<u8>) -> Vec<u8> {
                    $crate::glue::process_framed::<$plugin>(&batch)
                }
            }

            $crate::bindings::__export_world!(Export with_types_in $crate::bindings);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last level is what `rsplit('/')` gives first, for every shape of topic.
    #[test]
    fn last_topic_level_is_what_follows_the_last_slash() {
        for topic in [
            "plant/7/thermostat/t-100",
            "plant/7/thermostat/device-0123456789abcdef",
            "plant/7/thermostat/device-0123456789abcdef/",
            "/0123456",
            "/01234567",
            "01234567/",
            "0123456789abcdef",
            "a/0123456789abcdef",
            "ab/cd/ef/gh/ij/kl/mn/op",
            "aa/é/ü€/Gerät-0123456789",
            "t-100",
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            "château/Gerät-é",
            "ü/€😀",
        ] {
            let m = Message::new(topic, "");
            assert_eq!(
                m.last_topic_level(),
                topic.rsplit('/').next().unwrap(),
                "{topic:?}"
            );
        }
        // Every place for one or two slashes, across and within the words it reads.
        for len in 0..=26 {
            for p in 0..=len {
                for q in p..=len {
                    let topic: String = (0..len)
                        .map(|i| if i == p || i == q { '/' } else { 'x' })
                        .collect();
                    let m = Message::new(topic.clone(), "");
                    assert_eq!(m.last_topic_level(), topic.rsplit('/').next().unwrap());
                }
            }
        }
    }

    /// `text` gives `from_utf8`'s verdict, and its error's position, wherever the non-ASCII
    /// or broken bytes fall: in, across and after the 32-byte blocks it passes whole.
    #[test]
    fn text_agrees_with_from_utf8() {
        let inserts: [&[u8]; 7] = [
            "é".as_bytes(),
            "€".as_bytes(),
            "😀".as_bytes(),
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\xed\xa0\x80",
        ];
        let mut cases = 0;
        for len in [0, 1, 7, 8, 9, 31, 32, 33, 40, 63, 64, 65, 100, 300] {
            let plain = vec![b'a'; len];
            assert_eq!(text(&plain).unwrap(), std::str::from_utf8(&plain).unwrap());
            for at in 0..=len {
                for insert in inserts {
                    let mut bytes = plain.clone();
                    bytes.splice(at..at, insert.iter().copied());
                    let (got, want) = (text(&bytes), std::str::from_utf8(&bytes));
                    assert_eq!(got, want, "{bytes:?}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 4_000);
    }

    /// Echoes every field of a message, so that the glue's handling of a batch shows.
    struct Echo;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Echoed {
        topic: String,
        payload: Vec<u8>,
        properties: Vec<(String, String)>,
        content_type: Option<String>,
        received_at_ms: i64,
    }

    impl Plugin for Echo {
        type Record<'m> = Echoed;
        fn init(_: &Config) -> std::result::Result<Self, String> {
            Ok(Echo)
        }
        fn transform(&self, m: &Message) -> Result<Echoed> {
            match m.payload.as_slice() {
                b"reject" => Err(Rejection::new("test.rejected", "on request")),
                b"skip" => Ok(Emit::Skip),
                _ => Ok(Emit::one(
                    Record::from(Echoed {
                        topic: m.topic.clone(),
                        payload: m.payload.clone(),
                        properties: m.properties.clone(),
                        content_type: m.content_type.clone(),
                        received_at_ms: m.received_at_ms,
                    })
                    .with_key(m.topic.clone()),
                )),
            }
        }
    }

    /// A record value that cannot be serialised when it holds `true`.
    struct Unpackable(bool);

    impl Serialize for Unpackable {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            if self.0 {
                return Err(serde::ser::Error::custom("refused on request"));
            }
            s.serialize_bool(false)
        }
    }

    /// Emits two records for `bad`, the second of which cannot be serialised; refuses to be
    /// built without a `ok` config key.
    struct Picky;

    impl Plugin for Picky {
        type Record<'m> = Unpackable;
        fn init(config: &Config) -> std::result::Result<Self, String> {
            config
                .get("ok")
                .map(|_| Picky)
                .ok_or_else(|| "needs `ok`".to_string())
        }
        fn transform(&self, m: &Message) -> Result<Unpackable> {
            Ok(Emit::many([
                Unpackable(false),
                Unpackable(m.payload == b"bad"),
            ]))
        }
    }

    fn framed(payloads: &[&str]) -> Vec<u8> {
        let mut batch = Vec::new();
        frame::put_len(&mut batch, payloads.len());
        for p in payloads {
            frame::put_message(&mut batch, "t", p.as_bytes(), &[], None, 0);
        }
        batch
    }

    /// A record that cannot be serialised turns its message into a `record.serialize`
    /// rejection: what was written of its outcome is taken back, and the reply stays well
    /// framed for the messages around it.
    #[test]
    fn an_unserialisable_record_rejects_only_its_message() {
        glue::init::<Picky>(vec![("ok".into(), "1".into())]).unwrap();
        let out = glue::process_framed::<Picky>(&framed(&["a", "bad", "c"]));
        let outcomes = frame::read_outcomes(&out, 3, 10).unwrap();
        assert!(matches!(&outcomes[0], frame::OutcomeRef::Emit(r) if r.len() == 2));
        let frame::OutcomeRef::Reject { code, reason } = outcomes[1] else {
            panic!("{outcomes:?}")
        };
        assert_eq!(code, "record.serialize");
        assert!(reason.contains("refused on request"), "{reason}");
        assert!(matches!(&outcomes[2], frame::OutcomeRef::Emit(r) if r.len() == 2));
    }

    /// A plugin the host did not initialise, whose empty config is refused, rejects every
    /// message of the batch with `plugin.config` and the plugin's words.
    #[test]
    fn an_uninitialised_plugin_that_needs_config_rejects_the_batch() {
        let out = glue::process_framed::<Picky>(&framed(&["a", "b"]));
        let outcomes = frame::read_outcomes(&out, 2, 10).unwrap();
        for o in &outcomes {
            let frame::OutcomeRef::Reject { code, reason } = o else {
                panic!("{outcomes:?}")
            };
            assert_eq!(*code, "plugin.config");
            assert!(reason.contains("needs `ok`"), "{reason}");
        }
    }

    /// A framed batch through the glue: each message reaches the plugin whole and alone
    /// (nothing of the one before it is left in the reused message), and each result comes
    /// back framed, in order, its record packed.
    #[test]
    fn a_framed_batch_reaches_the_plugin_message_by_message() {
        let props = vec![("site".to_string(), "plant-7".to_string())];
        let sent = [
            (
                "a/long/topic",
                &b"first, the longest payload"[..],
                props.clone(),
                Some("text/plain"),
                7,
            ),
            ("b", &b"reject"[..], vec![], None, 8),
            ("c", &b"short"[..], vec![], None, 9),
            ("d", &b"skip"[..], props.clone(), Some("x"), 10),
        ];
        let mut batch = Vec::new();
        frame::put_len(&mut batch, sent.len());
        for (topic, payload, props, ct, at) in &sent {
            frame::put_message(&mut batch, topic, payload, props, *ct, *at);
        }
        let out = glue::process_framed::<Echo>(&batch);
        let outcomes = frame::read_outcomes(&out, sent.len(), 10).unwrap();
        let echoed = |i: usize| match &outcomes[i] {
            frame::OutcomeRef::Emit(records) => {
                assert_eq!(records.len(), 1);
                assert_eq!(records[0].key, Some(sent[i].0));
                rmp_serde::from_slice::<Echoed>(records[0].value).unwrap()
            }
            other => panic!("message {i}: {other:?}"),
        };
        assert_eq!(
            echoed(0),
            Echoed {
                topic: "a/long/topic".into(),
                payload: b"first, the longest payload".to_vec(),
                properties: props,
                content_type: Some("text/plain".into()),
                received_at_ms: 7,
            }
        );
        assert_eq!(
            outcomes[1],
            frame::OutcomeRef::Reject {
                code: "test.rejected",
                reason: "on request"
            }
        );
        assert_eq!(
            echoed(2),
            Echoed {
                topic: "c".into(),
                payload: b"short".to_vec(),
                properties: vec![],
                content_type: None,
                received_at_ms: 9,
            }
        );
        assert_eq!(outcomes[3], frame::OutcomeRef::Skip);
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Reading<'a> {
        device: &'a str,
        temp_c: f64,
    }

    /// JSON is read from the payload as text, checked once: valid JSON parses (strings
    /// borrowed from the payload), text that is not UTF-8 or not JSON is `payload.malformed`
    /// with the cause.
    #[test]
    fn json_payloads_parse_and_bad_ones_are_rejected_with_the_cause() {
        let m = Message::new("t", &br#"{"device":"t-1","temp_c":21.5}"#[..]);
        assert_eq!(
            m.json::<Reading>(),
            Ok(Reading {
                device: "t-1",
                temp_c: 21.5
            })
        );
        let not_text = Message::new("t", &b"{\"device\":\"\xff\"}"[..]);
        let r = not_text.json::<Reading>().unwrap_err();
        assert_eq!(r.code, "payload.malformed");
        assert!(r.reason.contains("not UTF-8"), "{}", r.reason);
        let shape = Message::new("t", &br#"{"device":1}"#[..]);
        assert!(
            shape
                .json::<Reading>()
                .unwrap_err()
                .reason
                .contains("wrong shape"),
            "a wrong shape says so"
        );
        let syntax = Message::new("t", &b"{"[..]);
        let syntax = syntax.json::<Reading>().unwrap_err();
        assert!(
            syntax.reason.contains("not valid JSON"),
            "{}",
            syntax.reason
        );
    }
}
