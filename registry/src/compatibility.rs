//! Reader/writer compatibility: can data written with one schema be read with another?
//!
//! The rules are the "Schema Resolution" section of the Avro specification, decided the way
//! Avro's reference checkers decide them (Java's `SchemaCompatibility`, which Confluent's
//! registry uses, and Python's `avro.compatibility`, which the conformance suite in
//! `tests/compatibility.rs` asks for every verdict). `apache-avro` parses; the decision is
//! made here because that crate's own checker refuses changes the reference accepts (a record
//! holding a `decimal` could not gain a field, writer unions, enum defaults and aliases were
//! not resolved).
//!
//! Each rule is one function below, with the specification's words in its doc comment. Where
//! the checkers go beyond the specification (a union is resolved branch by branch, not by
//! "the first that matches"), the checkers' answer is taken, because that is the verdict every
//! other Confluent-compatible registry gives.

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamesRef, RecordSchema,
    ResolvedSchema, UuidSchema,
};
use std::collections::HashMap;
use std::fmt;

/// One reason the reader cannot read what the writer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Where in the reader's schema, as a path of record, field and branch names.
    pub location: String,
    /// What does not resolve.
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.location, self.message)
    }
}

/// Reasons kept per pair of types. Reasons multiply with every level of a schema whose
/// record types are shared (two fields of the next type, forty levels deep, is 2^40 reasons
/// for one changed leaf); a handful tells the author what to fix.
pub const MAX_REASONS: usize = 16;

/// Type pairs one check may compare. Pairs of records are compared once each (memoised),
/// so a real schema needs a few per field; this bounds what a crafted one can cost (about a
/// second of one core) while the registry keeps answering others.
pub const MAX_STEPS: u64 = 2_000_000;

/// A check that did not finish within [`MAX_STEPS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "checking compatibility needed more than {steps} type comparisons and was stopped; simplify the schema (fewer nested unions of shared types) or check it with compatibility NONE"
)]
pub struct TooComplex {
    /// The limit that was reached.
    pub steps: u64,
}

/// Every reason data written with `writer` cannot be read with `reader` (at most
/// [`MAX_REASONS`]); empty when it can.
pub fn check(reader: &Schema, writer: &Schema) -> Result<Vec<Incompatibility>, TooComplex> {
    check_within(reader, writer, MAX_STEPS)
}

/// [`check`] with a chosen step limit.
pub fn check_within(
    reader: &Schema,
    writer: &Schema,
    max_steps: u64,
) -> Result<Vec<Incompatibility>, TooComplex> {
    let reader_names = match ResolvedSchema::new(reader) {
        Ok(r) => r,
        Err(e) => return Ok(vec![unresolved("reader", &e)]),
    };
    let writer_names = match ResolvedSchema::new(writer) {
        Ok(w) => w,
        Err(e) => return Ok(vec![unresolved("writer", &e)]),
    };
    let mut checker = Checker {
        reader_names: reader_names.get_names(),
        writer_names: writer_names.get_names(),
        memo: HashMap::new(),
        path: Vec::new(),
        steps_left: max_steps,
    };
    let found = checker.pair(reader, writer);
    if checker.steps_left == 0 {
        return Err(TooComplex { steps: max_steps });
    }
    Ok(found)
}

/// Append `more` to `found`, keeping at most [`MAX_REASONS`].
fn add(found: &mut Vec<Incompatibility>, more: Vec<Incompatibility>) {
    let room = MAX_REASONS.saturating_sub(found.len());
    found.extend(more.into_iter().take(room));
}

fn unresolved(side: &str, e: &apache_avro::Error) -> Incompatibility {
    Incompatibility {
        location: "/".into(),
        message: format!("the {side}'s schema has a name that does not resolve: {e}"),
    }
}

/// A schema seen through its logical type, references followed: what resolution compares.
///
/// Logical types resolve on their underlying type: the specification serialises a logical
/// type exactly as its underlying type, and the reference checkers compare only that (so a
/// `long` reads a `timestamp-millis`, and a `decimal`'s precision and scale are not compared).
#[derive(Clone, Copy)]
enum View<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    /// A reference to a name the schema does not define (parsing refuses these; kept so a
    /// surprise is a refusal, not a panic).
    Unresolved(&'a Name),
}

impl View<'_> {
    fn kind(&self) -> &'static str {
        match self {
            View::Null => "null",
            View::Boolean => "boolean",
            View::Int => "int",
            View::Long => "long",
            View::Float => "float",
            View::Double => "double",
            View::Bytes => "bytes",
            View::String => "string",
            View::Array(_) => "array",
            View::Map(_) => "map",
            View::Union(_) => "union",
            View::Record(_) => "record",
            View::Enum(_) => "enum",
            View::Fixed(_) => "fixed",
            View::Unresolved(_) => "unresolved reference",
        }
    }
}

fn view<'a>(schema: &'a Schema, names: &NamesRef<'a>) -> View<'a> {
    match schema {
        Schema::Null => View::Null,
        Schema::Boolean => View::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => View::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => View::Long,
        Schema::Float => View::Float,
        Schema::Double => View::Double,
        Schema::Bytes
        | Schema::BigDecimal
        | Schema::Uuid(UuidSchema::Bytes)
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Bytes,
            ..
        }) => View::Bytes,
        Schema::String | Schema::Uuid(UuidSchema::String) => View::String,
        Schema::Fixed(f)
        | Schema::Uuid(UuidSchema::Fixed(f))
        | Schema::Duration(f)
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(f),
            ..
        }) => View::Fixed(f),
        Schema::Array(a) => View::Array(&a.items),
        Schema::Map(m) => View::Map(&m.types),
        Schema::Union(u) => View::Union(u.variants()),
        Schema::Record(r) => View::Record(r),
        Schema::Enum(e) => View::Enum(e),
        Schema::Ref { name } => match names.get(name) {
            Some(target) if !matches!(target, Schema::Ref { .. }) => view(target, names),
            _ => View::Unresolved(name),
        },
    }
}

/// The state of one pair in the memo.
enum Seen {
    /// Being checked further up the stack: a recursive type meeting itself, which the
    /// reference checkers treat as compatible (the rest of the check decides).
    InProgress,
    Done(Vec<Incompatibility>),
}

struct Checker<'r, 'w> {
    reader_names: &'r NamesRef<'r>,
    writer_names: &'w NamesRef<'w>,
    /// Record pairs by address: recursion can only pass through a record.
    memo: HashMap<(usize, usize), Seen>,
    path: Vec<String>,
    /// Comparisons left; at zero every comparison answers "no reason" and the caller
    /// reports [`TooComplex`] instead of the (incomplete) result.
    steps_left: u64,
}

impl<'r, 'w> Checker<'r, 'w> {
    fn pair(&mut self, reader: &'r Schema, writer: &'w Schema) -> Vec<Incompatibility> {
        let r = view(reader, self.reader_names);
        let w = view(writer, self.writer_names);
        self.views(r, w)
    }

    fn views(&mut self, r: View<'r>, w: View<'w>) -> Vec<Incompatibility> {
        let (View::Record(rr), View::Record(wr)) = (r, w) else {
            return self.resolve(r, w);
        };
        let key = (
            rr as *const RecordSchema as usize,
            wr as *const RecordSchema as usize,
        );
        match self.memo.get(&key) {
            Some(Seen::InProgress) => return Vec::new(),
            Some(Seen::Done(found)) => return found.clone(),
            None => {}
        }
        self.memo.insert(key, Seen::InProgress);
        let found = self.resolve(r, w);
        self.memo.insert(key, Seen::Done(found.clone()));
        found
    }

    /// The specification's "It is an error if the two schemas do not match", rule by rule.
    fn resolve(&mut self, r: View<'r>, w: View<'w>) -> Vec<Incompatibility> {
        if self.steps_left == 0 {
            return Vec::new();
        }
        self.steps_left -= 1;
        match (r, w) {
            (View::Unresolved(n), _) | (_, View::Unresolved(n)) => {
                self.fail(format!("the name {} does not resolve", n.fullname(None)))
            }
            (View::Array(ri), View::Array(wi)) => self.nested("items", |c| c.pair(ri, wi)),
            (View::Map(rv), View::Map(wv)) => self.nested("values", |c| c.pair(rv, wv)),
            (View::Record(rr), View::Record(wr)) => self.records(rr, wr),
            (View::Enum(re), View::Enum(we)) => self.enums(re, we),
            (View::Fixed(rf), View::Fixed(wf)) => self.fixed(rf, wf),
            (_, View::Union(wb)) => self.writer_union(r, wb),
            (View::Union(rb), _) => self.reader_union(rb, w),
            _ if same_primitive(&r, &w) || promotes(&w, &r) => Vec::new(),
            _ => self.fail(format!(
                "a reader of type {} cannot read the writer's {}",
                r.kind(),
                w.kind()
            )),
        }
    }

    /// Both records: "the ordering of fields may be different: fields are matched by name";
    /// "schemas for fields with the same name in both records are resolved recursively";
    /// "if the writer's record contains a field with a name not present in the reader's
    /// record, the writer's value for that field is ignored"; "if the reader's record schema
    /// has a field that contains a default value, and writer's schema does not have a field
    /// with the same name, then the reader should use the default value from its field";
    /// "if the reader's record schema has a field with no default value, and writer's schema
    /// does not have a field with the same name, an error is signalled". A reader field also
    /// matches a writer field named by one of its aliases (the reader's name first, then its
    /// aliases in order, as the reference checkers look them up). The records' names must
    /// match as in [`Checker::names`].
    fn records(&mut self, r: &'r RecordSchema, w: &'w RecordSchema) -> Vec<Incompatibility> {
        let mut found = self.names(&r.name, r.aliases.as_deref(), &w.name);
        for field in &r.fields {
            let writer_field = std::iter::once(&field.name)
                .chain(&field.aliases)
                .find_map(|n| w.fields.iter().find(|wf| &wf.name == n));
            self.path.push(field.name.clone());
            match writer_field {
                Some(wf) => {
                    let more = self.pair(&field.schema, &wf.schema);
                    add(&mut found, more);
                }
                None if field.default.is_some() => {}
                None => add(&mut found, self.fail(format!(
                    "the reader's field {} has no default and the writer's record {} has no field of that name{}",
                    field.name,
                    w.name.fullname(None),
                    if field.aliases.is_empty() {
                        String::new()
                    } else {
                        format!(" or of its aliases {:?}", field.aliases)
                    }
                ))),
            }
            self.path.pop();
        }
        found
    }

    /// Both enums: "if the writer's symbol is not present in the reader's enum and the reader
    /// has a default value, then that value is used, otherwise an error is signalled" (Avro
    /// 1.9 and later). Checked for every symbol the writer may write; the names must match as
    /// in [`Checker::names`].
    fn enums(&mut self, r: &'r EnumSchema, w: &'w EnumSchema) -> Vec<Incompatibility> {
        let mut found = self.names(&r.name, r.aliases.as_deref(), &w.name);
        let has_default = r.default.as_ref().is_some_and(|d| r.symbols.contains(d));
        let missing: Vec<&String> = w
            .symbols
            .iter()
            .filter(|s| !r.symbols.contains(s))
            .collect();
        if !missing.is_empty() && !has_default {
            add(&mut found, self.fail(format!(
                "the writer's enum {} has symbols {missing:?} the reader's enum lacks, and the reader's enum has no default",
                w.name.fullname(None)
            )));
        }
        found
    }

    /// Both fixed: "both schemas are fixed with the same (unqualified) name and size"; the
    /// name as in [`Checker::names`].
    fn fixed(&mut self, r: &'r FixedSchema, w: &'w FixedSchema) -> Vec<Incompatibility> {
        let mut found = self.names(&r.name, r.aliases.as_deref(), &w.name);
        if r.size != w.size {
            add(
                &mut found,
                self.fail(format!(
                    "the reader's fixed {} has size {} and the writer's {}",
                    r.name.fullname(None),
                    r.size,
                    w.size
                )),
            );
        }
        found
    }

    /// Named types match on their unqualified names ("both schemas are records with the same
    /// (unqualified) name"), or when one of the reader's aliases is the writer's full name
    /// ("an implementation may optionally use aliases to map a writer's schema to the
    /// reader's"). An alias without a dot is in the reader's namespace, as the specification
    /// defines names; Python's checker compares the alias as written instead (see the README).
    fn names(
        &mut self,
        reader: &Name,
        aliases: Option<&[apache_avro::schema::Alias]>,
        writer: &Name,
    ) -> Vec<Incompatibility> {
        let aliased = aliases
            .unwrap_or_default()
            .iter()
            .any(|a| a.fully_qualified_name(reader.namespace()).as_ref() == writer);
        if reader.name() == writer.name() || aliased {
            return Vec::new();
        }
        self.fail(format!(
            "the reader's {} is not the writer's {} and has no alias naming it",
            reader.fullname(None),
            writer.fullname(None)
        ))
    }

    /// The writer's schema is a union: "if the reader's schema matches the selected writer's
    /// schema, it is recursively resolved against it. If they do not match, an error is
    /// signalled." Any branch may be selected by the data, so every branch must resolve: a
    /// `double` reads `["int", "float"]`, a non-union cannot read a branch it lacks. When
    /// both are unions the reader's union is resolved against each writer branch in turn
    /// ([`Checker::reader_union`]).
    fn writer_union(&mut self, r: View<'r>, writer_branches: &'w [Schema]) -> Vec<Incompatibility> {
        let mut found = Vec::new();
        for (i, branch) in writer_branches.iter().enumerate() {
            let w = view(branch, self.writer_names);
            let this = self.views(r, w);
            if !this.is_empty() {
                self.path.push(format!("writer branch {i} ({})", w.kind()));
                let branch = self.fail(format!(
                    "the reader cannot read the writer's union branch {i} ({})",
                    w.kind()
                ));
                add(&mut found, branch);
                self.path.pop();
                add(&mut found, this);
            }
        }
        found
    }

    /// The reader's schema is a union and the writer's is not: "the first schema in the
    /// reader's union that matches the writer's schema is recursively resolved against it. If
    /// none match, an error is signalled." The reference checkers accept when any branch
    /// resolves completely, and so does this.
    fn reader_union(&mut self, reader_branches: &'r [Schema], w: View<'w>) -> Vec<Incompatibility> {
        for branch in reader_branches {
            let r = view(branch, self.reader_names);
            if self.views(r, w).is_empty() {
                return Vec::new();
            }
        }
        self.fail(format!(
            "no branch of the reader's union can read the writer's {}",
            w.kind()
        ))
    }

    fn nested(
        &mut self,
        segment: &str,
        f: impl FnOnce(&mut Self) -> Vec<Incompatibility>,
    ) -> Vec<Incompatibility> {
        self.path.push(segment.to_owned());
        let found = f(self);
        self.path.pop();
        found
    }

    fn fail(&self, message: String) -> Vec<Incompatibility> {
        vec![Incompatibility {
            location: format!("/{}", self.path.join("/")),
            message,
        }]
    }
}

/// Both schemas are the same primitive: "both schemas have same primitive type".
fn same_primitive(r: &View<'_>, w: &View<'_>) -> bool {
    matches!(
        (r, w),
        (View::Null, View::Null)
            | (View::Boolean, View::Boolean)
            | (View::Int, View::Int)
            | (View::Long, View::Long)
            | (View::Float, View::Float)
            | (View::Double, View::Double)
            | (View::Bytes, View::Bytes)
            | (View::String, View::String)
    )
}

/// "The writer's schema may be promoted to the reader's as follows: int is promotable to
/// long, float, or double; long is promotable to float or double; float is promotable to
/// double; string is promotable to bytes; bytes is promotable to string."
fn promotes(w: &View<'_>, r: &View<'_>) -> bool {
    matches!(
        (w, r),
        (View::Int, View::Long | View::Float | View::Double)
            | (View::Long, View::Float | View::Double)
            | (View::Float, View::Double)
            | (View::String, View::Bytes)
            | (View::Bytes, View::String)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can_read(reader: &str, writer: &str) -> bool {
        let r = Schema::parse_str(reader).unwrap();
        let w = Schema::parse_str(writer).unwrap();
        check(&r, &w).unwrap().is_empty()
    }

    const METER: &str = r#"{"type":"record","name":"Meter","fields":[
        {"name":"kwh","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":3}}]}"#;

    #[test]
    fn a_record_with_a_decimal_gains_an_optional_field() {
        let v2 = r#"{"type":"record","name":"Meter","fields":[
            {"name":"kwh","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":3}},
            {"name":"tariff","type":["null","string"],"default":null}]}"#;
        assert!(can_read(v2, METER));
        assert!(can_read(METER, v2));
    }

    #[test]
    fn every_writer_branch_must_resolve() {
        assert!(can_read(r#""double""#, r#"["int","float"]"#));
        assert!(!can_read(r#""double""#, r#"["null","float"]"#));
        assert!(can_read(r#"["null","long"]"#, r#"["null","int"]"#));
        assert!(!can_read(r#"["null","int"]"#, r#"["null","long"]"#));
    }

    #[test]
    fn enum_default_reads_unknown_symbols() {
        let reader = r#"{"type":"enum","name":"E","symbols":["A","U"],"default":"U"}"#;
        let writer = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        assert!(can_read(reader, writer));
        assert!(!can_read(
            r#"{"type":"enum","name":"E","symbols":["A","U"]}"#,
            writer
        ));
    }

    #[test]
    fn aliases_name_the_writers_type_in_the_readers_namespace() {
        let writer = r#"{"type":"record","name":"Old","namespace":"x","fields":[]}"#;
        let relative =
            r#"{"type":"record","name":"New","namespace":"x","aliases":["Old"],"fields":[]}"#;
        let full =
            r#"{"type":"record","name":"New","namespace":"x","aliases":["x.Old"],"fields":[]}"#;
        let elsewhere =
            r#"{"type":"record","name":"New","namespace":"y","aliases":["Old"],"fields":[]}"#;
        assert!(can_read(relative, writer));
        assert!(can_read(full, writer));
        assert!(!can_read(elsewhere, writer));
        assert!(can_read(
            r#"{"type":"fixed","name":"F2","aliases":["F"],"size":4}"#,
            r#"{"type":"fixed","name":"F","size":4}"#
        ));
        assert!(!can_read(
            r#"{"type":"fixed","name":"F","size":8}"#,
            r#"{"type":"fixed","name":"F","size":4}"#
        ));
    }

    #[test]
    fn logical_types_resolve_on_their_underlying_type() {
        assert!(can_read(
            r#""long""#,
            r#"{"type":"int","logicalType":"date"}"#
        ));
        assert!(can_read(
            r#"{"type":"long","logicalType":"timestamp-millis"}"#,
            r#"{"type":"long","logicalType":"timestamp-micros"}"#
        ));
        assert!(!can_read(
            r#"{"type":"int","logicalType":"date"}"#,
            r#"{"type":"long","logicalType":"timestamp-millis"}"#
        ));
        assert!(can_read(
            r#"{"type":"string","logicalType":"uuid"}"#,
            r#""string""#
        ));
    }

    #[test]
    fn recursive_records_terminate() {
        let list = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#;
        let wider = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"long"},{"name":"next","type":["null","Node"],"default":null}]}"#;
        assert!(can_read(wider, list));
        let r = Schema::parse_str(list).unwrap();
        let w = Schema::parse_str(wider).unwrap();
        let found = check(&r, &w).unwrap();
        assert!(!found.is_empty());
        assert_eq!(found.last().unwrap().location, "/v", "{found:?}");
    }

    /// Records nested `depth` deep, each with two fields of the next record type (the
    /// first defines it, the second names it), the leaf holding one field of `leaf`.
    fn shared_tower(depth: usize, leaf: &str) -> String {
        let mut schema = format!(
            r#"{{"type":"record","name":"R{depth}","fields":[{{"name":"x","type":"{leaf}"}}]}}"#
        );
        for level in (0..depth).rev() {
            schema = format!(
                r#"{{"type":"record","name":"R{level}","fields":[{{"name":"a","type":{schema}}},{{"name":"b","type":"R{}"}}]}}"#,
                level + 1
            );
        }
        schema
    }

    #[test]
    fn shared_types_nested_deep_are_checked_once_per_pair_with_bounded_reasons() {
        let old = Schema::parse_str(&shared_tower(40, "int")).unwrap();
        let new = Schema::parse_str(&shared_tower(40, "string")).unwrap();
        let found = check(&new, &old).unwrap();
        assert!(!found.is_empty());
        assert!(found.len() <= MAX_REASONS, "{}", found.len());
        assert!(found[0].message.contains("string"), "{found:?}");
        assert!(check(&old, &old).unwrap().is_empty());
    }

    #[test]
    fn a_check_over_its_step_limit_is_refused_not_answered() {
        let old = Schema::parse_str(&shared_tower(10, "int")).unwrap();
        assert_eq!(check_within(&old, &old, 5), Err(TooComplex { steps: 5 }));
        assert!(check_within(&old, &old, 1_000).unwrap().is_empty());
    }
}
