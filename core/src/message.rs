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

/// Bytes of an oversize payload kept for its quarantine entry.
pub const OVERSIZE_PREFIX: usize = 4096;

/// The full size and digest of a payload too large to keep (the message then carries only
/// its first [`OVERSIZE_PREFIX`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversize {
    /// Payload bytes.
    pub size: u64,
    /// sha256 of the whole payload, lowercase hex.
    pub sha256: String,
}

/// MQTT's largest remaining length (a variable byte integer of four bytes): no packet, and
/// so no payload, is larger.
pub const MQTT_MAX_REMAINING: usize = 268_435_455;
