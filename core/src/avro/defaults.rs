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
use std::collections::{HashMap, HashSet};

/// Most values (and 64-byte pieces of text) a schema's field defaults may expand to: far
/// above what any real schema's defaults hold (one per field, plus a few small arrays).
pub const MAX_DEFAULT_EXPANSION: usize = 1 << 18;

/// Deepest the walk of a default may go (records, arrays, maps, unions and references),
/// counting the records it fills in.
const MAX_DEFAULT_DEPTH: usize = 256;

/// Refuse a schema whose field defaults, expanded as Avro expands them, would hold more
/// than [`MAX_DEFAULT_EXPANSION`] values or nest deeper than 256 levels.
///
/// The count errs high where Avro libraries differ: every branch of a union counts, twice
/// (apache-avro resolves a union's value once to pick the branch, then again), and a
/// default counts whole (every node, key and 64 bytes of text) each time it is taken. A
/// reference the walk cannot resolve, and a name defined twice, are refused: what such a
/// schema expands to depends on the library's reading of it.
pub fn check(schema: &Value) -> Result<(), String> {
    let mut walk = Walk {
        named: HashMap::new(),
        defined: HashSet::new(),
        left: MAX_DEFAULT_EXPANSION,
    };
    walk.collect(schema, "")?;
    walk.schema(schema, "")
}

/// A named type's definition, and the namespace its references resolve in.
type Def<'a> = (&'a Value, String);

/// The named types by full name, and by alias (which some libraries resolve references
/// to, and which several types may share: each counts).
struct Walk<'a> {
    named: HashMap<String, Vec<Def<'a>>>,
    /// The full names defined (not aliases).
    defined: HashSet<String>,
    /// Values the defaults may still expand to.
    left: usize,
}

/// The full name a definition or reference `name` has inside namespace `ns`.
fn full_name(name: &str, ns: &str) -> String {
    let name = name.strip_prefix('.').unwrap_or(name);
    if name.contains('.') || ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}.{name}")
    }
}

/// A named type's definition: a record, error, enum or fixed with a name.
fn named_def(def: &serde_json::Map<String, Value>) -> Option<&str> {
    let name = def.get("name").and_then(Value::as_str)?;
    let kind = def.get("type").and_then(Value::as_str)?;
    matches!(kind, "record" | "error" | "enum" | "fixed").then_some(name)
}

/// The namespace `def` (found inside `ns`) sets for what it encloses: only a named type
/// sets one.
fn own_namespace(def: &serde_json::Map<String, Value>, ns: &str) -> String {
    let Some(name) = named_def(def) else {
        return ns.to_owned();
    };
    let full = full_name(
        name,
        def.get("namespace").and_then(Value::as_str).unwrap_or(ns),
    );
    match full.rsplit_once('.') {
        Some((space, _)) => space.to_owned(),
        None => String::new(),
    }
}

impl<'a> Walk<'a> {
    /// Index every named type under its full name and its aliases.
    fn collect(&mut self, schema: &'a Value, ns: &str) -> Result<(), String> {
        match schema {
            Value::Array(branches) => branches.iter().try_for_each(|b| self.collect(b, ns)),
            Value::Object(def) => {
                let inner = own_namespace(def, ns);
                if let Some(name) = named_def(def) {
                    let own = def.get("namespace").and_then(Value::as_str).unwrap_or(ns);
                    let full = full_name(name, own);
                    // An alias may repeat a name; a definition may not.
                    if !self.defined.insert(full.clone()) {
                        return Err(format!("it defines the name {full} twice"));
                    }
                    self.named
                        .entry(full)
                        .or_default()
                        .push((schema, inner.clone()));
                    let aliases = def.get("aliases").and_then(Value::as_array);
                    for alias in aliases.into_iter().flatten().filter_map(Value::as_str) {
                        let key = full_name(alias, &inner);
                        self.named
                            .entry(key)
                            .or_default()
                            .push((schema, inner.clone()));
                    }
                }
                for key in ["type", "items", "values"] {
                    if let Some(inner_schema) = def.get(key) {
                        self.collect(inner_schema, &inner)?;
                    }
                }
                if let Some(Value::Array(fields)) = def.get("fields") {
                    for f in fields {
                        if let Some(t) = f.get("type") {
                            self.collect(t, &inner)?;
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
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
                            self.taken(d)?;
                            self.value(t, &inner, d, 0)?;
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Take `n` from what is left, or say the defaults expand too far.
    fn charge(&mut self, n: usize) -> Result<(), String> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "its field defaults expand to more than {MAX_DEFAULT_EXPANSION} values once the records they hold take their own defaults"
            )),
        }
    }

    /// A default taken: counted whole, as a library converts the whole of it each time
    /// (every node, every key, text in 64-byte pieces). serde_json bounds its nesting.
    fn taken(&mut self, default: &Value) -> Result<(), String> {
        match default {
            Value::String(s) => self.charge(1 + s.len() / 64),
            Value::Array(items) => {
                self.charge(1)?;
                items.iter().try_for_each(|v| self.taken(v))
            }
            Value::Object(entries) => {
                self.charge(1)?;
                entries.iter().try_for_each(|(k, v)| {
                    self.charge(k.len() / 64)?;
                    self.taken(v)
                })
            }
            _ => self.charge(1),
        }
    }

    /// Count `value` as a value of `schema`, with the defaults a record value leaves to
    /// its fields.
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
        self.charge(1 + value.as_str().map_or(0, str::len) / 64)?;
        let depth = depth + 1;
        match schema {
            Value::Array(branches) => {
                for b in branches {
                    self.value(b, ns, value, depth)?;
                    self.value(b, ns, value, depth)?;
                }
                Ok(())
            }
            Value::String(name) if is_primitive(name) => Ok(()),
            Value::String(name) => {
                // Resolved in the enclosing namespace, else as written; both count where
                // both exist, as libraries differ on which they take.
                let mut found: Vec<Def<'a>> = Vec::new();
                for key in [full_name(name, ns), full_name(name, "")] {
                    for (def, inner) in self.named.get(&key).into_iter().flatten() {
                        if !found.iter().any(|(d, _)| std::ptr::eq(*d, *def)) {
                            found.push((*def, inner.clone()));
                        }
                    }
                }
                if found.is_empty() {
                    return Err(format!("it refers to a type {name:?} it does not define"));
                }
                found
                    .into_iter()
                    .try_for_each(|(def, inner)| self.value(def, &inner, value, depth))
            }
            Value::Object(def) => {
                let inner = own_namespace(def, ns);
                let fields = def.get("fields").and_then(Value::as_array);
                match (def.get("type"), value, fields) {
                    (Some(Value::String(t)), Value::Object(given), Some(fields))
                        if t == "record" || t == "error" =>
                    {
                        for f in fields {
                            let (Some(name), Some(t)) =
                                (f.get("name").and_then(Value::as_str), f.get("type"))
                            else {
                                continue;
                            };
                            match (given.get(name), f.get("default")) {
                                (Some(v), _) => self.value(t, &inner, v, depth)?,
                                (None, Some(d)) => {
                                    self.taken(d)?;
                                    // A union field's default is resolved once more.
                                    if t.is_array() {
                                        self.value(t, &inner, d, depth)?;
                                    }
                                    self.value(t, &inner, d, depth)?;
                                }
                                (None, None) => {}
                            }
                        }
                        Ok(())
                    }
                    (Some(Value::String(t)), Value::Array(items), _) if t == "array" => {
                        self.each(def.get("items"), &inner, items.iter(), depth)
                    }
                    (Some(Value::String(t)), Value::Object(entries), _) if t == "map" => {
                        self.each(def.get("values"), &inner, entries.values(), depth)
                    }
                    // A named type's definition is its own: a record of no fields, an enum,
                    // a fixed.
                    (Some(Value::String(_)), _, _) if named_def(def).is_some() => Ok(()),
                    // `{"type": "Name"}` (`{"type": "error"}` names a type called `error`),
                    // `{"type": {…}}`, `{"type": […]}`: the type it wraps.
                    (Some(t @ Value::String(name)), _, _) if !is_primitive(name) => {
                        if matches!(name.as_str(), "record" | "enum" | "fixed" | "array" | "map") {
                            return Ok(());
                        }
                        self.value(t, ns, value, depth)
                    }
                    (Some(t @ (Value::Object(_) | Value::Array(_))), _, _) => {
                        self.value(t, ns, value, depth)
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

impl<'a> Walk<'a> {
    /// Count each of an array's items or a map's values as a value of `of`.
    fn each<'v>(
        &mut self,
        of: Option<&'a Value>,
        ns: &str,
        mut values: impl Iterator<Item = &'v Value>,
        depth: usize,
    ) -> Result<(), String> {
        let Some(of) = of else { return Ok(()) };
        values.try_for_each(|v| self.value(of, ns, v, depth))
    }
}

/// A primitive type's name.
fn is_primitive(t: &str) -> bool {
    matches!(
        t,
        "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string"
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

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn unions_nested_by_default_count_as_libraries_resolve_them() {
        // R0 holds a union of R1 defaulting to {}, R1 one of R2, … R40: a library resolves
        // each union's value twice, 2^40 times in all, from a few kilobytes.
        let mut defs: Vec<String> = vec![r#"{"type":"record","name":"R40","fields":[]}"#.into()];
        for i in (0..40).rev() {
            defs.push(format!(
                r#"{{"type":"record","name":"R{i}","fields":[{{"name":"u","type":["R{}"],"default":{{}}}}]}}"#,
                i + 1
            ));
        }
        defs.reverse();
        let schema = json(&format!(
            r#"{{"type":"record","name":"Top","fields":[{}]}}"#,
            defs.iter()
                .enumerate()
                .map(|(i, d)| format!(r#"{{"name":"d{i}","type":{d}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        ));
        let why = check(&schema).unwrap_err();
        assert!(why.contains("expand to more than"), "{why}");
    }

    #[test]
    fn bulk_in_a_default_counts_each_time_it_is_taken() {
        let bytes = vec!["0"; 100_000].join(",");
        let key = "k".repeat(64 * 1000);
        for (field, default) in [
            (r#""bytes""#, format!("[{bytes}]")),
            (
                r#"{"type":"map","values":"int"}"#,
                format!(r#"{{"{key}":1}}"#),
            ),
        ] {
            let schema = json(&format!(
                r#"{{"type":"record","name":"O","fields":[{{"name":"ps","type":{{"type":"array",
                    "items":{{"type":"record","name":"P","fields":[
                        {{"name":"b","type":{field},"default":{default}}}]}}}},
                    "default":[{}]}}]}}"#,
                vec!["{}"; 1000].join(",")
            ));
            let why = check(&schema).unwrap_err();
            assert!(why.contains("expand to more than"), "{why}");
        }
    }

    #[test]
    fn names_resolve_by_alias_and_are_defined_once() {
        // The bulky record is referred to by an alias only.
        let aliased = json(&format!(
            r#"{{"type":"record","name":"O","namespace":"n","fields":[
                {{"name":"b","type":{{"type":"record","name":"B","aliases":["BB"],"fields":[
                    {{"name":"fill","type":"string","default":"{}"}}]}},"default":{{}}}},
                {{"name":"bs","type":{{"type":"array","items":"BB"}},"default":[{}]}}]}}"#,
            "x".repeat(100_000),
            vec!["{}"; 1000].join(",")
        ));
        assert!(check(&aliased).unwrap_err().contains("expand to more than"));
        let twice = json(
            r#"{"type":"record","name":"O","fields":[
                {"name":"a","type":{"type":"record","name":"B","fields":[]}},
                {"name":"b","type":{"type":"record","name":"B","fields":[
                    {"name":"x","type":"int","default":1}]}}]}"#,
        );
        assert!(check(&twice).unwrap_err().contains("twice"));
        let unknown = json(
            r#"{"type":"record","name":"O","fields":[{"name":"a","type":"Nowhere","default":{}}]}"#,
        );
        assert!(check(&unknown).unwrap_err().contains("does not define"));
    }

    #[test]
    fn a_deep_walk_is_refused_not_overflowed() {
        // A field type wrapped 120 times, ending in its own record, defaulting to {}.
        let mut t = r#""R""#.to_owned();
        for _ in 0..120 {
            t = format!(r#"{{"type":{t}}}"#);
        }
        let schema = json(&format!(
            r#"{{"type":"record","name":"R","fields":[{{"name":"r","type":{t},"default":{{}}}}]}}"#
        ));
        let why = check(&schema).unwrap_err();
        assert!(
            why.contains("deeper than") || why.contains("expand"),
            "{why}"
        );
    }
}
