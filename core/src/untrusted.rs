//! Text from outside weir — a device's MQTT topic, a plugin's log line — made safe to
//! write into weir's own log lines.

use std::fmt;

/// Text from outside weir (a plugin's log line, a device's MQTT topic), written into a log
/// line with its control characters escaped: a newline cannot start a forged line, and
/// terminal escapes cannot rewrite the screen.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c.is_control()) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found a char");
            for e in c.escape_default() {
                f.write_char(e)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let forged = "ok\n2026-12-04T00:00:00Z  INFO weir: all good\r\x1b[2Jé\u{85}";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(
            shown,
            "ok\\n2026-12-04T00:00:00Z  INFO weir: all good\\r\\u{1b}[2Jé\\u{85}"
        );
        assert_eq!(
            Untrusted("plant/a/thermostat/7").to_string(),
            "plant/a/thermostat/7"
        );
    }
}
