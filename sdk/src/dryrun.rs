//! The JSON-lines format of `weir transform` (a dry run of a plugin), shared by the CLI and
//! by native fixture tests so both read and print exactly the same thing.
//!
//! Input, one message per line:
//! `{"topic": "a/b", "payload": "<utf-8 text>"}` or `"payload_base64": "..."`, optionally
//! `"properties": {"k": "v"}` (or `[["k","v"], ...]` to keep order and repeats),
//! `"content_type"` and `"received_at_ms"`.
//!
//! Output, one line per input: `{"outcome":"emit","records":[{"key":..,"value":{..},
//! "headers":{..}}]}`, `{"outcome":"reject","code":..,"reason":..}`, `{"outcome":"skip"}` or
//! `{"outcome":"fail","code":..,"reason":..}`.

use crate::Message;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    properties: Option<Properties>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    received_at_ms: i64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Properties {
    Map(serde_json::Map<String, Value>),
    Pairs(Vec<(String, String)>),
}

/// Parse one input line into a message, or say what is wrong with it.
pub fn parse_input(line: &str) -> Result<Message, String> {
    let input: InputLine = serde_json::from_str(line).map_err(|e| {
        format!(
            "not a valid input line ({e}); expected {{\"topic\": \"...\", \"payload\": \"...\"}}"
        )
    })?;
    let payload = match (input.payload, input.payload_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("`payload_base64` is not valid base64: {e}"))?,
        (Some(_), Some(_)) => return Err("give `payload` or `payload_base64`, not both".into()),
        (None, None) => return Err("missing `payload` (text) or `payload_base64`".into()),
    };
    let properties = match input.properties {
        None => Vec::new(),
        Some(Properties::Pairs(pairs)) => pairs,
        Some(Properties::Map(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(format!("property `{k}` must be a string, got {other}")),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Message {
        topic: input.topic,
        payload,
        properties,
        content_type: input.content_type,
        received_at_ms: input.received_at_ms,
    })
}

/// One printed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineRecord {
    /// The Kafka key, if the plugin set one.
    pub key: Option<String>,
    /// The record value as JSON.
    pub value: Value,
    /// Headers the plugin added.
    pub headers: serde_json::Map<String, Value>,
}

/// One printed outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum LineOutcome {
    /// Records emitted.
    Emit {
        /// The records, in order.
        records: Vec<LineRecord>,
    },
    /// The plugin rejected the message.
    Reject {
        /// Rejection code.
        code: String,
        /// Rejection reason.
        reason: String,
    },
    /// The plugin skipped the message.
    Skip,
    /// The message failed: the input line, the plugin (trap, timeout, OOM) or the schema.
    Fail {
        /// Failure code, e.g. `plugin.trap` or `schema.violation`.
        code: String,
        /// What happened.
        reason: String,
    },
}

/// Rejection codes whose reason is the plugin SDK's JSON or text decoder's own words,
/// which differ between plugin languages: for these the code is the contract.
pub const PARSER_CODES: [&str; 2] = ["payload.malformed", "payload.encoding"];

impl LineOutcome {
    /// Whether this outcome is what a fixture `expected`: equal, except that the reason of
    /// a rejection with one of [`PARSER_CODES`] is not compared, so that one fixture file
    /// holds for a plugin in any language.
    pub fn matches(&self, expected: &LineOutcome) -> bool {
        match (self, expected) {
            (LineOutcome::Reject { code, .. }, LineOutcome::Reject { code: want, .. })
                if PARSER_CODES.contains(&want.as_str()) =>
            {
                code == want
            }
            _ => self == expected,
        }
    }

    /// The output line, without a newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("outcomes serialise to JSON")
    }
}

/// Headers as a JSON object, in order of first appearance.
pub fn headers_json(headers: &[(String, String)]) -> serde_json::Map<String, Value> {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(code: &str, reason: &str) -> LineOutcome {
        LineOutcome::Reject {
            code: code.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn a_parsers_reason_is_not_part_of_the_fixture_contract() {
        let serde = reject(
            "payload.malformed",
            "EOF while parsing a value at line 1 column 16",
        );
        let python = reject("payload.malformed", "Expecting value at line 1 column 17");
        assert!(python.matches(&serde));
        assert!(!reject("payload.ambiguous", "a").matches(&reject("payload.ambiguous", "b")));
        assert!(!reject("reading.unit", "x").matches(&serde));
        assert!(!LineOutcome::Skip.matches(&serde));
        assert!(LineOutcome::Skip.matches(&LineOutcome::Skip));
    }
}
