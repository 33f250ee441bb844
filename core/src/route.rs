//! The route stage: which cohort a message belongs to (topic filter + user properties, first
//! match wins, in config order), and the cohort's Kafka key template.

/// What is wrong with an MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// No characters at all.
    #[error("empty topic filter")]
    Empty,
    /// `#` inside a level, or not in the last one.
    #[error("{0:?}: `#` must be a whole level and the last one")]
    MultiLevel(String),
    /// `+` inside a level.
    #[error("{0:?}: `+` must be a whole level")]
    SingleLevel(String),
}

/// Check an MQTT topic filter's syntax; the error says what is wrong.
pub fn check_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Err(FilterError::MultiLevel(filter.to_owned()));
        }
        if l.contains('+') && *l != "+" {
            return Err(FilterError::SingleLevel(filter.to_owned()));
        }
    }
    Ok(())
}

/// Could one topic match both filters? (Two groups' subscriptions must not overlap, and a
/// cohort's topic must overlap one of its group's.)
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

/// Does `topic` match `filter` (MQTT wildcards)? Topics starting with `$` do not match
/// filters starting with a wildcard (MQTT-4.7.2-1). Every message is routed through this:
/// it walks both once, byte by byte, level by level.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    // `i` and `j` are at the start of a level of each.
    let (mut i, mut j) = (0, 0);
    loop {
        let whole = |at: usize| f.get(at + 1).is_none_or(|&b| b == b'/');
        match f.get(i) {
            Some(b'#') if whole(i) => return true,
            Some(b'+') if whole(i) => {
                i += 1;
                while j < t.len() && t[j] != b'/' {
                    j += 1;
                }
            }
            _ => {
                while i < f.len() && f[i] != b'/' {
                    if t.get(j) != Some(&f[i]) {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
                if j < t.len() && t[j] != b'/' {
                    return false;
                }
            }
        }
        // Both are at the end of a level.
        match (i == f.len(), j == t.len()) {
            (true, true) => return true,
            (false, false) => (i, j) = (i + 1, j + 1),
            // The topic ended: only a `#` (matching its parent level too) may follow.
            (false, true) => return &f[i + 1..] == b"#",
            (true, false) => return false,
        }
    }
}

/// Level `n` (from 0) of `topic`, if it has that many (a key template reads one for every
/// record): one pass up to the level's end.
fn topic_level(topic: &str, n: usize) -> Option<&str> {
    let (mut level, mut start) = (0, 0);
    for (at, &b) in topic.as_bytes().iter().enumerate() {
        if b == b'/' {
            if level == n {
                return topic.get(start..at);
            }
            level += 1;
            start = at + 1;
        }
    }
    if level == n { topic.get(start..) } else { None }
}

/// Glob match with `*` for any run of characters (for user-property values like `2.*`).
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() || !value.ends_with(last)
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// A cohort's matching rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Topic filter.
    pub filter: String,
    /// Required user properties (glob values).
    pub properties: Vec<(String, String)>,
}

impl Rule {
    /// Does the message match?
    pub fn matches(&self, topic: &str, properties: &[(String, String)]) -> bool {
        topic_matches(&self.filter, topic)
            && self.properties.iter().all(|(k, pat)| {
                properties
                    .iter()
                    .any(|(pk, pv)| pk == k && glob_matches(pat, pv))
            })
    }
}

/// Index of the first rule that matches, if any.
pub fn route(rules: &[Rule], topic: &str, properties: &[(String, String)]) -> Option<usize> {
    rules.iter().position(|r| r.matches(topic, properties))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    TopicLevel(usize),
    PluginKey,
    Field(String),
}

/// What is wrong with a key template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("{0:?}: unclosed `{{`")]
    Unclosed(String),
    /// `{topic[...]}` without a number.
    #[error("{template:?}: `{{{placeholder}}}` needs a level number, like {{topic[2]}}")]
    LevelNumber {
        /// The template.
        template: String,
        /// What was between the braces.
        placeholder: String,
    },
    /// A placeholder weir does not know.
    #[error(
        "{template:?}: unknown placeholder `{{{placeholder}}}`; use {{topic[N]}}, {{key}} or {{field.NAME}}"
    )]
    Unknown {
        /// The template.
        template: String,
        /// What was between the braces.
        placeholder: String,
    },
}

/// A key template: `{topic[N]}`, `{key}`, `{field.NAME}` and literal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

/// The empty template: the key the plugin set.
impl Default for KeyTemplate {
    fn default() -> Self {
        KeyTemplate {
            parts: vec![Part::PluginKey],
        }
    }
}

impl KeyTemplate {
    /// Parse a template; an empty template means "the key the plugin set".
    pub fn parse(s: &str) -> Result<KeyTemplate, TemplateError> {
        if s.is_empty() {
            return Ok(KeyTemplate::default());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(s.to_owned()))?
                + open;
            let inner = &rest[open + 1..close];
            parts.push(if inner == "key" {
                Part::PluginKey
            } else if let Some(n) = inner
                .strip_prefix("topic[")
                .and_then(|r| r.strip_suffix(']'))
            {
                Part::TopicLevel(n.parse().map_err(|_| TemplateError::LevelNumber {
                    template: s.to_owned(),
                    placeholder: inner.to_owned(),
                })?)
            } else if let Some(f) = inner.strip_prefix("field.").filter(|f| !f.is_empty()) {
                Part::Field(f.to_owned())
            } else {
                return Err(TemplateError::Unknown {
                    template: s.to_owned(),
                    placeholder: inner.to_owned(),
                });
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(KeyTemplate { parts })
    }

    /// Whether rendering needs the record's JSON fields.
    pub fn needs_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// Render the key. `field` looks up a top-level record field as text. `None` if a part
    /// is missing (no such topic level, no plugin key, no such field).
    pub fn render(
        &self,
        topic: &str,
        plugin_key: Option<&str>,
        field: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        // One part, the usual template: its text copied once, at its size.
        match &self.parts[..] {
            [Part::PluginKey] => return plugin_key.map(str::to_owned),
            [Part::TopicLevel(n)] => return topic_level(topic, *n).map(str::to_owned),
            _ => {}
        }
        let mut out = String::with_capacity(topic.len());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::TopicLevel(n) => out.push_str(topic_level(topic, *n)?),
                Part::PluginKey => out.push_str(plugin_key?),
                Part::Field(f) => out.push_str(&field(f)?),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_filter_or_template_and_the_fix() {
        assert_eq!(
            check_filter("a/#/b").unwrap_err().to_string(),
            "\"a/#/b\": `#` must be a whole level and the last one"
        );
        assert_eq!(
            check_filter("a/b+").unwrap_err().to_string(),
            "\"a/b+\": `+` must be a whole level"
        );
        assert_eq!(check_filter("").unwrap_err(), FilterError::Empty);
        assert_eq!(
            KeyTemplate::parse("{topic[x]}").unwrap_err().to_string(),
            "\"{topic[x]}\": `{topic[x]}` needs a level number, like {topic[2]}"
        );
        assert_eq!(
            KeyTemplate::parse("{nope}").unwrap_err().to_string(),
            "\"{nope}\": unknown placeholder `{nope}`; use {topic[N]}, {key} or {field.NAME}"
        );
        assert_eq!(
            KeyTemplate::parse("{topic[1]").unwrap_err().to_string(),
            "\"{topic[1]\": unclosed `{`"
        );
    }

    #[test]
    fn filter_overlap() {
        for (a, b) in [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("#", "x/y/z"),
            ("+/b/#", "a/+/c"),
            ("a/b", "a/b/#"),
        ] {
            assert!(filters_overlap(a, b), "{a} {b}");
            assert!(filters_overlap(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("a/b", "a/c"),
            ("a", "a/+"),
            ("a/+/c", "a/b/d"),
            ("+", "a/b"),
        ] {
            assert!(!filters_overlap(a, b), "{a} {b}");
            assert!(!filters_overlap(b, a), "{b} {a}");
        }
    }

    #[test]
    fn topic_filters() {
        assert!(topic_matches(
            "plant/+/thermostat/+",
            "plant/7/thermostat/t-1"
        ));
        assert!(!topic_matches("plant/+/thermostat/+", "plant/7/thermostat"));
        assert!(topic_matches("fleet/#", "fleet/v-1/gps"));
        assert!(topic_matches("fleet/#", "fleet"));
        assert!(!topic_matches("#", "$SYS/broker"));
        // Against the definition, level by level, on every pair of these.
        fn reference(filter: &str, topic: &str) -> bool {
            if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
                return false;
            }
            let (mut f, mut t) = (filter.split('/'), topic.split('/'));
            loop {
                match (f.next(), t.next()) {
                    (Some("#"), _) => return true,
                    (Some("+"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }
        let filters = [
            "#", "+", "a", "a/#", "a/+", "+/+", "a/+/c", "a//c", "a/", "/a", "+/#", "a/b/#", "/",
            "", "$SYS/#", "a/b/c", "+/b/+", "a/+/#", "+/+/+", "$SYS/+", "a/b/c/",
        ];
        let topics = [
            "", "a", "a/", "/a", "a/b", "a/b/c", "a//c", "a/b/c/d", "b", "/", "//", "$SYS/x", "ab",
            "a/bc", "a/b/", "a/b/c/", "$SYS", "x/b/y", "a/bb/c",
        ];
        for f in filters {
            for t in topics {
                assert_eq!(topic_matches(f, t), reference(f, t), "{f:?} {t:?}");
            }
        }
        for t in topics {
            for n in 0..5 {
                assert_eq!(topic_level(t, n), t.split('/').nth(n), "{t:?} {n}");
            }
        }
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("a/+/#").is_ok());
    }

    #[test]
    fn property_globs_and_first_match_wins() {
        assert!(glob_matches("2.*", "2.0.1"));
        assert!(!glob_matches("2.*", "3.0"));
        assert!(glob_matches("*-beta*", "2.1-beta3"));
        let rules = vec![
            Rule {
                filter: "plant/#".into(),
                properties: vec![("fw".into(), "2.*".into())],
            },
            Rule {
                filter: "plant/#".into(),
                properties: vec![],
            },
        ];
        let fw = |v: &str| vec![("fw".to_owned(), v.to_owned())];
        assert_eq!(route(&rules, "plant/1", &fw("2.4")), Some(0));
        assert_eq!(route(&rules, "plant/1", &fw("3.0")), Some(1));
        assert_eq!(route(&rules, "other", &[]), None);
    }

    #[test]
    fn key_templates() {
        let t = KeyTemplate::parse("dev-{topic[3]}").unwrap();
        assert_eq!(
            t.render("plant/7/thermostat/t-1", None, |_| None)
                .as_deref(),
            Some("dev-t-1")
        );
        assert_eq!(t.render("plant/7", None, |_| None), None);
        let level = KeyTemplate::parse("{topic[3]}").unwrap();
        for (topic, key) in [
            ("plant/7/thermostat/t-1", Some("t-1")),
            ("plant/7/thermostat/t-1/x", Some("t-1")),
            ("plant/7/thermostat/", Some("")),
            ("plant/7/thermostat", None),
        ] {
            assert_eq!(
                level.render(topic, None, |_| None).as_deref(),
                key,
                "{topic}"
            );
        }
        let f = KeyTemplate::parse("{field.device_id}").unwrap();
        assert!(f.needs_fields());
        assert_eq!(
            f.render("x", None, |n| (n == "device_id").then(|| "d".into()))
                .as_deref(),
            Some("d")
        );
        assert_eq!(
            KeyTemplate::parse("")
                .unwrap()
                .render("x", Some("k"), |_| None)
                .as_deref(),
            Some("k")
        );
        assert!(KeyTemplate::parse("{topic[x]}").is_err());
        assert!(KeyTemplate::parse("{nope}").is_err());
        assert!(KeyTemplate::parse("{topic[1]").is_err());
    }
}
