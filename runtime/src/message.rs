//! weir's own message type: one MQTT message as every stage after the source sees it.
//! (wasmtime's generated binding types stay inside `transform::sandbox`.)

/// One message, exactly as it arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// MQTT topic.
    pub topic: String,
    /// Payload bytes, untouched.
    pub payload: Vec<u8>,
    /// MQTT 5 user properties, in order.
    pub properties: Vec<(String, String)>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// When weir received it, Unix milliseconds (given to the plugin, so it is replayable).
    pub received_at_ms: i64,
}
