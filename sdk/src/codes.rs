//! Quarantine codes: why a message did not become records, and at which stage.
//!
//! One list, shared by the runtime (which writes `weir.error.code` / `weir.error.stage`
//! headers and metric labels), the SDK (whose own rejections use these names) and the CLI
//! help. A plugin's own rejection codes are free-form within [`check_plugin_code`]'s rules,
//! so that dashboards can group by them and metric labels stay bounded.

use std::fmt;

/// The stage of the data path a failure belongs to (`weir.error.stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// Reading the message from MQTT (e.g. too large).
    Source,
    /// Choosing a cohort.
    Route,
    /// The cohort's plugin.
    Transform,
    /// Validating and encoding the plugin's output.
    Encode,
    /// Writing to Kafka.
    Sink,
}

impl Stage {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Route => "route",
            Stage::Transform => "transform",
            Stage::Encode => "encode",
            Stage::Sink => "sink",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message went to quarantine (`weir.error.code`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Code {
    /// The payload is larger than `mqtt.max_message_bytes`; the entry holds a prefix.
    PayloadTooLarge,
    /// No cohort matched the topic and user properties.
    RouteUnmatched,
    /// The plugin trapped (panic, unreachable, out-of-bounds access, stack overflow).
    PluginTrap,
    /// The plugin ran past its CPU deadline.
    PluginTimeout,
    /// The plugin hit its memory cap.
    PluginOom,
    /// The plugin broke the contract (wrong outcome count, reserved header, bad code).
    PluginContract,
    /// The plugin's output exceeded the size limits.
    PluginOutputTooLarge,
    /// A record did not match the plugin's declared schema.
    SchemaViolation,
    /// Kafka refused a record write for good (too large, invalid, not authorised).
    SinkProduceFailed,
    /// The plugin rejected the message with its own code.
    Rejected(String),
}

impl Code {
    /// Every code weir itself assigns, for help text and documentation.
    pub const BUILTIN: [Code; 9] = [
        Code::PayloadTooLarge,
        Code::RouteUnmatched,
        Code::PluginTrap,
        Code::PluginTimeout,
        Code::PluginOom,
        Code::PluginContract,
        Code::PluginOutputTooLarge,
        Code::SchemaViolation,
        Code::SinkProduceFailed,
    ];

    /// The header value.
    pub fn as_str(&self) -> &str {
        match self {
            Code::PayloadTooLarge => "payload.too-large",
            Code::RouteUnmatched => "route.unmatched",
            Code::PluginTrap => "plugin.trap",
            Code::PluginTimeout => "plugin.timeout",
            Code::PluginOom => "plugin.oom",
            Code::PluginContract => "plugin.contract",
            Code::PluginOutputTooLarge => "plugin.output-too-large",
            Code::SchemaViolation => "schema.violation",
            Code::SinkProduceFailed => "sink.produce-failed",
            Code::Rejected(code) => code,
        }
    }

    /// The stage it belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            Code::PayloadTooLarge => Stage::Source,
            Code::RouteUnmatched => Stage::Route,
            Code::SchemaViolation => Stage::Encode,
            Code::SinkProduceFailed => Stage::Sink,
            _ => Stage::Transform,
        }
    }

    /// One line on what the code means and what to do, for help text.
    pub fn meaning(&self) -> &'static str {
        match self {
            Code::PayloadTooLarge => {
                "payload over mqtt.max_message_bytes; the entry keeps a prefix, the size and the sha256"
            }
            Code::RouteUnmatched => "no cohort matches the topic and user properties",
            Code::PluginTrap => "the plugin trapped (panic, out-of-bounds, stack overflow)",
            Code::PluginTimeout => "the plugin ran past its CPU deadline",
            Code::PluginOom => "the plugin hit its memory cap",
            Code::PluginContract => "the plugin broke the contract (see weir.error.message)",
            Code::PluginOutputTooLarge => "the plugin emitted too many or too large records",
            Code::SchemaViolation => "a record does not match the plugin's declared schema",
            Code::SinkProduceFailed => {
                "Kafka refused a record for good (too large, invalid, denied)"
            }
            Code::Rejected(_) => "the plugin rejected the message with this code",
        }
    }

    /// A plugin's rejection code, checked: a code that breaks the rules becomes
    /// [`Code::PluginContract`], with the reason.
    pub fn rejected(code: &str) -> Result<Code, String> {
        check_plugin_code(code)?;
        Ok(Code::Rejected(code.to_owned()))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest plugin rejection code.
pub const MAX_CODE_LEN: usize = 64;

/// The rules for a plugin's rejection code: 1 to 64 characters of `a-z`, `0-9`, `.`, `-`
/// and `_`, starting with a letter (`reading.out-of-range`). Codes become Kafka header values
/// and metric labels, so they must be short, stable and not carry message data.
pub fn check_plugin_code(code: &str) -> Result<(), String> {
    let shown: String = code.chars().take(MAX_CODE_LEN).collect();
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return Err(format!(
            "rejection code {shown:?} must be 1 to {MAX_CODE_LEN} characters long"
        ));
    }
    if !code.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "rejection code {shown:?} must start with a letter a-z"
        ));
    }
    if let Some(c) = code
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "rejection code {shown:?} contains {c:?}; use a-z, 0-9, `.`, `-` and `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_codes_have_stages_and_valid_names() {
        for c in Code::BUILTIN {
            check_plugin_code(c.as_str()).unwrap();
            assert!(!c.meaning().is_empty());
        }
        assert_eq!(Code::RouteUnmatched.stage(), Stage::Route);
        assert_eq!(Code::SchemaViolation.stage(), Stage::Encode);
        assert_eq!(Code::PayloadTooLarge.stage(), Stage::Source);
        assert_eq!(Code::Rejected("x".into()).stage(), Stage::Transform);
    }

    #[test]
    fn plugin_codes_are_checked() {
        assert_eq!(
            Code::rejected("reading.out-of-range").unwrap().as_str(),
            "reading.out-of-range"
        );
        for bad in ["", "Reading", "9x", "a b", "a\u{0}", "é", &"a".repeat(65)] {
            assert!(Code::rejected(bad).is_err(), "{bad:?}");
        }
    }
}
