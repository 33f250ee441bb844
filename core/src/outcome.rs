//! What the transform stage made of one message: records to publish, a rejection, nothing,
//! or a failure with its code. The sandbox produces it; the plan turns it into Kafka writes.

use weir_sdk::codes::Code;

/// One output record, validated and Avro-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Key set by the plugin, if any.
    pub key: Option<String>,
    /// The Avro binary datum (no framing).
    pub value: Vec<u8>,
    /// Headers set by the plugin.
    pub headers: Vec<(String, String)>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records to publish.
    Emit(Vec<Record>),
    /// The plugin rejected the message.
    Reject {
        /// The plugin's code.
        code: String,
        /// The plugin's reason.
        reason: String,
    },
    /// Nothing to publish.
    Skip,
    /// The message failed in the transform stage.
    Fail {
        /// Which failure ([`Code`] names every one).
        code: Code,
        /// What happened.
        reason: String,
    },
}
