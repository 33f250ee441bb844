//! weir's pure core: every decision of the data path that does not need a broker, a
//! producer or a sandbox, so each is unit-tested on its own.
//!
//! - [`message`]: one MQTT message as every stage after the source sees it.
//! - [`route`]: topic filters, property matches and key templates → a cohort.
//! - [`outcome`]: what the transform made of a message.
//! - [`plan`]: a message, its cohort and its outcome → the Kafka writes, and from Kafka's
//!   answers what happens next (done, retry, quarantine instead).
//! - [`write`]: a Kafka write and the classes of refusal the plan acts on.
//! - [`ack`]: acknowledgements released in arrival order.
//! - [`avro`] and [`frame`]: the schema-guided Avro walk and the Confluent wire format.
//! - [`headers`]: the names of the Kafka headers weir writes.
//! - [`untrusted`]: text from devices and plugins, escaped for logs.
//!
//! No tokio, no rdkafka, no wasmtime: the I/O around these lives in the `weir` crate.

pub mod ack;
pub mod avro;
pub mod frame;
pub mod headers;
pub mod message;
pub mod outcome;
pub mod plan;
pub mod route;
pub mod untrusted;
pub mod write;
