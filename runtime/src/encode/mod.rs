//! The encode stage: Avro for plugin output.

pub mod avro;
