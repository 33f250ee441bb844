//! How far a schema's field defaults expand, bounded before the schema is parsed.
//!
//! A record value in a default takes the defaults of the fields it leaves out, and those may
//! hold records again: `"default": [{}, {}, …]` against an array of a record whose own field
//! defaults to another such array multiplies at every level, so a schema of a few kilobytes
//! can stand for gigabytes of values. Avro libraries check a default by building its value
//! (apache-avro does, when it parses), so such a schema would exhaust memory at load: when a
//! plugin describes itself, or when someone registers it. This walk counts what the
//! defaults would build, without building it, and stops at [`MAX_DEFAULT_EXPANSION`].

use serde_json::Value;
use std::collections::HashMap;

/// Most values (and 64-byte pieces of text) a schema's field defaults may expand to: far
/// above what any real schema's defaults hold (one per field, plus a few small arrays).
pub const MAX_DEFAULT_EXPANSION: usize = 1 << 18;

/// Deepest a default's value may nest (records, arrays and maps), counting the records it
/// fills in.
const MAX_DEFAULT_DEPTH: usize = 64;

/// Refuse a schema whose field defaults, expanded as Avro expands them, would hold more
/// than [`MAX_DEFAULT_EXPANSION`] values or nest deeper than 64 levels.
pub fn check(schema: &Value) -> Result<(), String> {
    let mut walk = Walk {
        named: HashMap::new(),
        left: MAX_DEFAULT_EXPANSION,
    };
    walk.collect(schema, "");
    walk.schema(schema, "")
}

/// The named types by full name, each with the namespace its references resolve in.
struct Walk<'a> {
    named: HashMap<String, (&'a Value, String)>,
    /// Values the defaults may still expand to.
    left: usize,
}

/// The full name a definition or reference `name` has inside namespace `ns`.
fn full_name(name: &str, ns: &str) -> String {
    if name.contains('.') || ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}.{name}")
    }
}

/// The namespace a named definition `def` (found inside `ns`) sets for what it encloses.
fn own_namespace(def: &serde_json::Map<String, Value>, ns: &str) -> String {
    let name = def.get("name").and_then(Value::as_str).unwrap_or("");
    match name.rsplit_once('.') {
        Some((space, _)) => space.to_owned(),
        None => match def.get("namespace").and_then(Value::as_str) {
            Some(space) => space.to_owned(),
            None => ns.to_owned(),
        },
    }
}

impl<'a> Walk<'a> {
    /// Index every named type under its full name.
    fn collect(&mut self, schema: &'a Value, ns: &str) {
        match schema {
            Value::Array(branches) => branches.iter().for_each(|b| self.collect(b, ns)),
            Value::Object(def) => {
                let inner = own_namespace(def, ns);
                if let Some(name) = def.get("name").and_then(Value::as_str)
                    && matches!(
                        def.get("type").and_then(Value::as_str),
                        Some("record" | "error" | "enum" | "fixed")
                    )
                {
                    let full = full_name(
                        name,
                        def.get("namespace").and_then(Value::as_str).unwrap_or(ns),
                    );
                    self.named.entry(full).or_insert((schema, inner.clone()));
                }
                for key in ["type", "items", "values"] {
                    if let Some(inner_schema) = def.get(key) {
                        self.collect(inner_schema, &inner);
                    }
                }
                if let Some(Value::Array(fields)) = def.get("fields") {
                    for f in fields {
                        if let Some(t) = f.get("type") {
                            self.collect(t, &inner);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Count the defaults of every field the schema defines.
    fn schema(&mut self, schema: &'a Value, ns: &str) -> Result<(), String> {
        match schema {
            Value::Array(branches) => branches.iter().try_for_each(|b| self.schema(b, ns)),
            Value::Object(def) => {
                let inner = own_namespace(def, ns);
                for key in ["type", "items", "values"] {
                    if let Some(s @ (Value::Object(_) | Value::Array(_))) = def.get(key) {
                        self.schema(s, &inner)?;
                    }
                }
                if let Some(Value::Array(fields)) = def.get("fields") {
                    for f in fields {
                        let Some(t) = f.get("type") else { continue };
                        self.schema(t, &inner)?;
                        if let Some(d) = f.get("default") {
                            self.value(t, &inner, d, 0)?;
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Count `value` as a value of `schema`, with the defaults a record value leaves to
    /// its fields. Every branch of a union counts, as a library may try each.
    fn value(
        &mut self,
        schema: &'a Value,
        ns: &str,
        value: &Value,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEFAULT_DEPTH {
            return Err(format!(
                "its field defaults nest deeper than {MAX_DEFAULT_DEPTH} levels once the records they hold take their own defaults"
            ));
        }
        let text = value.as_str().map_or(0, str::len) / 64;
        match self.left.checked_sub(1 + text) {
            Some(left) => self.left = left,
            None => {
                return Err(format!(
                    "its field defaults expand to more than {MAX_DEFAULT_EXPANSION} values once the records they hold take their own defaults"
                ));
            }
        }
        match schema {
            Value::Array(branches) => {
                for b in branches {
                    self.value(b, ns, value, depth)?;
                }
                Ok(())
            }
            Value::String(name) => {
                let found = self
                    .named
                    .get(&full_name(name, ns))
                    .or_else(|| self.named.get(name.as_str()))
                    .map(|(def, inner)| (*def, inner.clone()));
                match found {
                    Some((def, inner)) => self.value(def, &inner, value, depth),
                    None => Ok(()),
                }
            }
            Value::Object(def) => {
                let inner = own_namespace(def, ns);
                match (def.get("type"), value) {
                    (Some(Value::String(t)), Value::Object(given))
                        if t == "record" || t == "error" =>
                    {
                        let Some(Value::Array(fields)) = def.get("fields") else {
                            return Ok(());
                        };
                        for f in fields {
                            let (Some(name), Some(t)) =
                                (f.get("name").and_then(Value::as_str), f.get("type"))
                            else {
                                continue;
                            };
                            if let Some(v) = given.get(name).or_else(|| f.get("default")) {
                                self.value(t, &inner, v, depth + 1)?;
                            }
                        }
                        Ok(())
                    }
                    (Some(Value::String(t)), Value::Array(items)) if t == "array" => {
                        let Some(item) = def.get("items") else {
                            return Ok(());
                        };
                        items
                            .iter()
                            .try_for_each(|v| self.value(item, &inner, v, depth + 1))
                    }
                    (Some(Value::String(t)), Value::Object(entries)) if t == "map" => {
                        let Some(of) = def.get("values") else {
                            return Ok(());
                        };
                        entries
                            .values()
                            .try_for_each(|v| self.value(of, &inner, v, depth + 1))
                    }
                    // `{"type": "Name"}`, `{"type": {…}}`: the type it wraps.
                    (Some(t @ Value::String(name)), _) if !is_keyword(name) => {
                        self.value(t, ns, value, depth)
                    }
                    (Some(t @ (Value::Object(_) | Value::Array(_))), _) => {
                        self.value(t, ns, value, depth)
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// A `type` that is Avro's own, not a reference to a named type.
fn is_keyword(t: &str) -> bool {
    matches!(
        t,
        "null"
            | "boolean"
            | "int"
            | "long"
            | "float"
            | "double"
            | "bytes"
            | "string"
            | "record"
            | "error"
            | "enum"
            | "fixed"
            | "array"
            | "map"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of a kilobyte's default, `n` of them by default in each `B`, `n` `B`s by
    /// default in the top record: n² kilobytes from a schema of a few n bytes.
    fn tower(n: usize, namespace: &str) -> Value {
        let fill = "x".repeat(1000);
        let empties = vec!["{}"; n].join(",");
        serde_json::from_str(&format!(
            r#"{{"type":"record","name":"O","namespace":"{namespace}","fields":[{{"name":"bs","type":
                {{"type":"array","items":{{"type":"record","name":"B","fields":[{{"name":"pads","type":
                {{"type":"array","items":{{"type":"record","name":"Pad","fields":[
                    {{"name":"fill","type":"string","default":"{fill}"}}]}}}},"default":[{empties}]}}]}}}},
                "default":[{empties}]}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn defaults_that_multiply_are_refused_before_they_are_built() {
        let why = check(&tower(2000, "t")).unwrap_err();
        assert!(why.contains("expand to more than"), "{why}");
        // By name too: the same tower with its records referred to by name.
        let by_name: Value = serde_json::from_str(&format!(
            r#"{{"type":"record","name":"O","namespace":"n","fields":[
                {{"name":"pad","type":{{"type":"record","name":"Pad","fields":[
                    {{"name":"fill","type":"string","default":"{}"}}]}},"default":{{}}}},
                {{"name":"b","type":{{"type":"record","name":"B","fields":[
                    {{"name":"pads","type":{{"type":"array","items":"n.Pad"}},"default":[{}]}}]}},
                    "default":{{}}}},
                {{"name":"bs","type":{{"type":"array","items":"B"}},"default":[{}]}}]}}"#,
            "x".repeat(1000),
            vec!["{}"; 2000].join(","),
            vec!["{}"; 2000].join(",")
        ))
        .unwrap();
        let why = check(&by_name).unwrap_err();
        assert!(why.contains("expand to more than"), "{why}");
    }

    #[test]
    fn a_record_that_defaults_to_itself_is_refused() {
        let schema: Value = serde_json::from_str(
            r#"{"type":"record","name":"R","fields":[{"name":"again","type":"R","default":{}}]}"#,
        )
        .unwrap();
        assert!(check(&schema).unwrap_err().contains("deeper than"));
    }

    #[test]
    fn ordinary_defaults_pass() {
        check(&tower(20, "t")).unwrap();
        let schema: Value = serde_json::from_str(
            r#"{"type":"record","name":"R","namespace":"a.b","fields":[
                {"name":"f","type":["null","float"],"default":null},
                {"name":"tags","type":{"type":"array","items":"string"},"default":["x","y"]},
                {"name":"m","type":{"type":"map","values":"long"},"default":{"a":1}},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]},"default":"A"},
                {"name":"next","type":["null","R"],"default":null},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"default":0}]}"#,
        )
        .unwrap();
        check(&schema).unwrap();
    }
}
