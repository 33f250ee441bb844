//! weir: MQTT → sandboxed Wasm transforms → governed Avro on Kafka.
//!
//! One module per stage of the data path; stages talk through small types.

#![deny(unsafe_code)] // Allowed only in `transform::cache` (loading precompiled artifacts).

pub mod ack;
pub mod admin;
pub mod config;
pub mod dryrun;
pub mod encode;
pub mod headers;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod route;
pub mod sink;
pub mod source;
pub mod transform;
