//! The encode stage's I/O: the schema ids of plugin schemas, obtained from a Confluent-API
//! registry once, at start-up or plugin load — never per message. The Avro walk and the
//! Confluent framing are pure and live in `weir_core::{avro, frame}`.

pub mod registry;
