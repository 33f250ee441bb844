//! Kafka header names weir writes. Names starting with `weir.` are reserved: a plugin may
//! not set them.

/// `name@version` of the plugin that made the record.
pub const PLUGIN: &str = "weir.plugin";
/// sha256 of the plugin's Wasm file.
pub const PLUGIN_SHA256: &str = "weir.plugin.sha256";
/// The cohort.
pub const COHORT: &str = "weir.cohort";
/// The message's id: unique per message taken in, and the same on its raw capture, its
/// records and its quarantine entry (what replay and verify join on).
pub const MESSAGE_ID: &str = "weir.message.id";
/// The MQTT topic the message arrived on.
pub const MQTT_TOPIC: &str = "weir.mqtt.topic";
/// The MQTT 5 content type, when the message had one.
pub const MQTT_CONTENT_TYPE: &str = "weir.mqtt.content-type";
/// When weir received the message, Unix milliseconds.
pub const RECEIVED_AT: &str = "weir.received_at";
/// Prefix for MQTT 5 user properties (`mqtt.<name>`).
pub const USER_PROPERTY_PREFIX: &str = "mqtt.";
/// Quarantine: the stage that failed.
pub const ERROR_STAGE: &str = "weir.error.stage";
/// Quarantine: the code.
pub const ERROR_CODE: &str = "weir.error.code";
/// Quarantine: what happened, for a human.
pub const ERROR_MESSAGE: &str = "weir.error.message";
/// Quarantine: records of the message already published before a record write failed.
pub const ERROR_RECORDS_PUBLISHED: &str = "weir.error.records-published";
/// On `sink.produce-failed`: the indices (among the message's records, from 0, comma
/// separated) of the records Kafka refused for good; the others it has.
pub const ERROR_RECORDS_REFUSED: &str = "weir.error.records-refused";
/// The value is a prefix of the payload; the full size follows.
pub const PAYLOAD_TRUNCATED: &str = "weir.payload.truncated";
/// Full payload size in bytes, when the value is a prefix.
pub const PAYLOAD_SIZE: &str = "weir.payload.size";
/// sha256 of the full payload, when the value is a prefix.
pub const PAYLOAD_SHA256: &str = "weir.payload.sha256";
/// The message was a retained message.
pub const MQTT_RETAINED: &str = "weir.mqtt.retained";
