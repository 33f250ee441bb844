//! A plugin that misbehaves on request, to prove the host contains it. The payload picks
//! the behaviour:
//!
//! | payload       | behaviour                                              |
//! |---------------|--------------------------------------------------------|
//! | `loop`        | spins forever (CPU deadline)                           |
//! | `bomb`        | allocates until memory runs out (memory cap)           |
//! | `panic`       | panics with a message (reported through `log`)       |
//! | `recurse`     | unbounded recursion (stack overflow)                   |
//! | `badschema`   | emits `{"text": 5}`, which violates the schema         |
//! | `huge`        | emits one record of 2 MiB                              |
//! | `many`        | emits 20,000 records                                   |
//! | `reject`      | rejects with `test.rejected`                           |
//! | `spoof`       | sets the reserved header `weir.plugin`                 |
//! | `forge`       | logs a line with a newline and a forged weir log line  |
//! | `chatty`      | logs 1,000 lines, then emits                           |
//! | `murmur`      | logs 50 lines (fewer than any per-call cap), then emits |
//! | `pair:N`      | emits two records: `{"text":"first"}`, then one of N bytes |
//! | `frame:cut`   | its batch's framed outcomes lose their last byte       |
//! | `frame:lie`   | its batch's framed outcomes claim 4 billion records    |
//! | `frame:junk`  | a byte follows its batch's framed outcomes             |
//! | `frame:poison`| its batch's framed outcomes, and every later call's of |
//! |               | this instance, lose their last byte                    |
//! | `headers:N`   | emits one record with N empty headers                  |
//! | anything else | emits `{"text": <payload>}`                            |
//!
//! Configured with `init = "loop"`, its `init` spins forever (the set-up call's deadline).
//!
//! It is built twice (`cargo xtask plugins`):
//! - 0.1.0 targets contract 1.2 (`framed-plugin`), as the SDK builds every plugin. The
//!   `frame:*` payloads are what the SDK cannot express: a reply that breaks the frame's
//!   layout, written by hand around the SDK's own glue.
//! - 0.1.1 (feature `packed`) targets contract 1.1 (`packed-plugin`), which weir still
//!   runs, and adds `alias`: 1,000 records whose values all point at the same 100 KB of its
//!   memory (100 MB once copied out). The canonical ABI passes a list as a pointer and a
//!   length, so nothing stops a 1.1 plugin from returning the same bytes many times.

use serde_json::{Value, json};
use weir_sdk::{Config, Emit, Message, Plugin, Record, Rejection};

/// The plugin; its one config key is `init` (see the module's doc).
#[derive(Debug)]
pub struct Adversarial;

#[inline(never)]
fn recurse(depth: u64, sink: &mut [u64; 16]) -> u64 {
    if depth == u64::MAX {
        return sink[0];
    }
    let mut local = [depth; 16];
    local[(depth % 16) as usize] ^= sink[(depth % 16) as usize];
    let below = recurse(std::hint::black_box(depth + 1), &mut local);
    below.wrapping_add(local[3])
}

impl Plugin for Adversarial {
    type Record<'m> = Value;

    fn init(config: &Config) -> Result<Self, String> {
        if config.get("init") == Some("loop") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Ok(Adversarial)
    }

    fn transform(&self, msg: &Message) -> weir_sdk::Result<Value> {
        let text = msg.payload_str()?;
        match text {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xAB; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("adversarial panic on request"),
            "recurse" => {
                let mut seed = [1u64; 16];
                let n = recurse(0, &mut seed);
                Ok(Emit::one(json!({ "text": n.to_string() })))
            }
            "badschema" => Ok(Emit::one(json!({ "text": 5 }))),
            "huge" => Ok(Emit::one(json!({ "text": "x".repeat(2 << 20) }))),
            "many" => Ok(Emit::many(
                (0..20_000).map(|i| json!({ "text": i.to_string() })),
            )),
            "reject" => Err(Rejection::new("test.rejected", "rejected on request")),
            "forge" => {
                weir_sdk::log(
                    weir_sdk::Level::Warn,
                    "innocent\n2026-12-04T00:00:00.000000Z  INFO weir: FORGED all messages acknowledged",
                );
                Ok(Emit::one(json!({ "text": "forge" })))
            }
            pair if pair.starts_with("pair:") => {
                let n: usize = pair[5..].parse().unwrap_or(0);
                Ok(Emit::many([
                    json!({ "text": "first" }),
                    json!({ "text": "x".repeat(n) }),
                ]))
            }
            "murmur" => {
                for i in 0..50 {
                    weir_sdk::log(weir_sdk::Level::Info, &format!("murmur line {i}"));
                }
                Ok(Emit::one(json!({ "text": "murmur" })))
            }
            "chatty" => {
                for i in 0..1_000 {
                    weir_sdk::log(weir_sdk::Level::Info, &format!("chatty line {i}"));
                }
                Ok(Emit::one(json!({ "text": "chatty" })))
            }
            headers if headers.starts_with("headers:") => {
                let n: usize = headers[8..].parse().unwrap_or(0);
                let mut record = Record::from(json!({ "text": "headers" }));
                record.headers = vec![(String::new(), String::new()); n];
                Ok(Emit::one(record))
            }
            "spoof" => Ok(Emit::one(
                Record::from(json!({ "text": "spoof" }))
                    .with_header("weir.plugin", "someone-else@9.9.9"),
            )),
            other => Ok(Emit::one(json!({ "text": other }))),
        }
    }
}

/// The Avro schema this plugin declares.
pub const SCHEMA: &str = include_str!("../echo.avsc");

/// Records in an `alias` outcome, and the bytes each value points at.
pub const ALIAS_RECORDS: usize = 1_000;
/// Length of the one buffer every `alias` record's value points at.
pub const ALIAS_BYTES: usize = 100_000;

#[cfg(not(feature = "packed"))]
#[allow(unsafe_code)] // Exported entry points are generated `extern` fns.
mod export {
    use super::*;
    use weir_sdk::bindings::weir::transform::types as wit;
    use weir_sdk::frame;

    struct Export;

    /// Set by `frame:poison`: this instance breaks every reply from then on.
    static POISONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// The SDK's reply to `batch`, broken as its first `frame:*` payload asks.
    fn process(batch: &[u8]) -> Vec<u8> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut reader = frame::Reader::new(batch);
        let n = reader.u32("count").expect("a framed batch");
        let attack = (0..n)
            .map(|_| reader.message().expect("a framed message").payload)
            .find(|p| p.starts_with(b"frame:"))
            .map(<[u8]>::to_vec);
        let mut out = weir_sdk::glue::process_framed::<Adversarial>(batch);
        if attack.as_deref() == Some(b"frame:poison") {
            POISONED.store(true, Relaxed);
        }
        match attack.as_deref() {
            _ if POISONED.load(Relaxed) => {
                out.pop();
            }
            Some(b"frame:cut") => {
                out.pop();
            }
            Some(b"frame:junk") => out.push(0),
            Some(b"frame:lie") => {
                out.truncate(4);
                for _ in 0..n {
                    frame::put_emit(&mut out, u32::MAX as usize);
                }
            }
            _ => {}
        }
        out
    }

    impl weir_sdk::bindings::Guest for Export {
        fn describe() -> wit::PluginInfo {
            weir_sdk::glue::describe(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), SCHEMA)
        }
        fn init(config: Vec<(String, String)>) -> Result<(), String> {
            weir_sdk::glue::init::<Adversarial>(config)
        }
        fn process_framed(batch: Vec<u8>) -> Vec<u8> {
            process(&batch)
        }
    }

    weir_sdk::bindings::__export_world!(Export with_types_in weir_sdk::bindings);
}

#[cfg(feature = "packed")]
#[allow(unsafe_code)] // Exported entry points are generated `extern` fns; `alias` aliases memory.
mod export {
    use super::*;
    use weir_sdk::bindings::weir::transform::types as wit;

    struct Export;

    /// One valid record value, `ALIAS_BYTES` long, leaked so that it lives on.
    fn shared_value() -> &'static [u8] {
        // A one-entry map (1 byte), "text" (5), a str32 header (5), then the text.
        let filler = ALIAS_BYTES - 11;
        let value = weir_sdk::glue::pack(&json!({ "text": "x".repeat(filler) }))
            .expect("a JSON value packs");
        assert_eq!(value.len(), ALIAS_BYTES);
        Box::leak(value.into_boxed_slice())
    }

    /// `ALIAS_RECORDS` records whose values are the same bytes. Each `Vec` claims the
    /// leaked buffer; the guest frees them after the host has copied them out, if it does.
    fn aliased() -> wit::PackedOutcome {
        let shared = shared_value();
        let records = (0..ALIAS_RECORDS)
            .map(|_| wit::PackedRecord {
                key: None,
                // SAFETY: deliberately unsound (the buffer is owned many times over); this
                // plugin exists to show the host survives a guest that lies in the ABI.
                value: unsafe {
                    Vec::from_raw_parts(shared.as_ptr().cast_mut(), shared.len(), shared.len())
                },
                headers: Vec::new(),
            })
            .collect();
        wit::PackedOutcome::Emit(records)
    }

    impl weir_sdk::packed_bindings::Guest for Export {
        fn describe() -> wit::PluginInfo {
            weir_sdk::glue::describe(env!("CARGO_PKG_NAME"), "0.1.1", SCHEMA)
        }
        fn init(config: Vec<(String, String)>) -> Result<(), String> {
            weir_sdk::glue::init::<Adversarial>(config)
        }
        fn process_packed(batch: Vec<wit::Message>) -> Vec<wit::PackedOutcome> {
            batch
                .into_iter()
                .map(|m| {
                    if m.payload == b"alias" {
                        aliased()
                    } else {
                        weir_sdk::glue::process_packed::<Adversarial>(vec![m])
                            .pop()
                            .expect("one outcome per message")
                    }
                })
                .collect()
        }
    }

    weir_sdk::packed_bindings::__export_packed_world!(Export with_types_in weir_sdk::packed_bindings);
}
