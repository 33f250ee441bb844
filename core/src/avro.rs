//! Avro for plugin output: validate a record's JSON text (contract 1.0's `record`) or
//! MessagePack (1.1's `packed-record`) against the plugin's declared schema and write Avro
//! binary in the same pass, with no intermediate value tree (DESIGN App. B: a `Value` tree
//! costs ~10x the direct path). One serde visitor takes the values of both: serde_json drives
//! it for JSON, and a reader of MessagePack markers (`packed`) drives it for MessagePack, so
//! one value gives the same Avro bytes whichever way it came. Plus the reverse, Avro binary to
//! JSON, for showing records to people (`weir transform`, the demo).
//!
//! JSON conventions (what the SDK's serde output naturally is): a union value is written
//! plain (`null`, `21.5`, `{..}`) and the branch is picked by the JSON type; where that is
//! ambiguous (several record/map branches) the Avro JSON form `{"<branch name>": value}` is
//! required. Missing record fields take the schema default; unknown fields are an error.
//!
//! MessagePack carries the same data model, with what JSON would make of it where the two
//! differ: an `f32` is taken as its shortest decimal (as JSON prints it), a NaN or infinity
//! as `null` (as serde_json writes it), an integer or boolean map key as its text. Binary
//! (`bin`) is accepted for `bytes` and `fixed`, which JSON can only write as text.

use apache_avro::Schema;
use apache_avro::schema::{DecimalSchema, InnerDecimalSchema, UuidSchema};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

pub mod defaults;
mod packed;

/// A schema the plugin declared, compiled for fast transcoding.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    nodes: Vec<Node>,
    /// How each node writes the MessagePack scalars it takes plainly (by index).
    plans: Vec<packed::Plans>,
    root: usize,
    canonical: String,
}

/// Why a schema could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema text is not a valid Avro schema.
    #[error("invalid Avro schema: {0}")]
    Parse(String),
    /// A field default does not fit its field's type.
    #[error("invalid default for field `{field}`: {reason}")]
    Default {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a record did not fit the schema (a `schema.violation`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// Why a record value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// It does not fit the schema (a `schema.violation`).
    #[error(transparent)]
    Violation(#[from] Violation),
    /// Its Avro encoding would be larger than the limit it was given. A field's default is
    /// written for every value that leaves the field out, so a schema with a large default
    /// can make a few bytes of input many bytes of Avro.
    #[error("{}", too_large(*limit, *by_defaults))]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
        /// Whether the field defaults written passed it, rather than the whole encoding.
        by_defaults: bool,
    },
}

fn too_large(limit: usize, by_defaults: bool) -> String {
    if by_defaults {
        format!(
            "the field defaults it leaves to the schema pass {limit} bytes of Avro (each default counting at least one)"
        )
    } else {
        format!("its Avro encoding is larger than {limit} bytes")
    }
}

/// The Avro bytes one encoding may write: a default-heavy value is refused as soon as its
/// defaults pass the limit, not after they have been written, and the whole is checked at
/// the end (other values write at most a few bytes of Avro per byte of input).
///
/// A default counts at least one byte even if it writes none (`null`, an empty record), so
/// that one byte of input cannot have the host fill in thousands of fields for nothing.
#[derive(Debug)]
struct Bound {
    limit: usize,
    /// Default bytes that may still be written.
    defaults_left: Cell<usize>,
    /// Set when a default would pass the limit.
    passed: Cell<bool>,
}

impl Bound {
    fn new(limit: usize) -> Self {
        Bound {
            limit,
            defaults_left: Cell::new(limit),
            passed: Cell::new(false),
        }
    }

    /// Take `n` bytes of default (at least one), or say that they would pass the limit.
    fn take_default(&self, n: usize) -> Result<(), String> {
        match self.defaults_left.get().checked_sub(n.max(1)) {
            Some(left) => {
                self.defaults_left.set(left);
                Ok(())
            }
            None => {
                self.passed.set(true);
                Err(too_large(self.limit, true))
            }
        }
    }

    /// The outcome of an encoding that wrote `written` bytes, given its result.
    fn verdict(&self, written: usize, result: Result<(), Violation>) -> Result<(), EncodeError> {
        let too_large = |by_defaults| EncodeError::TooLarge {
            limit: self.limit,
            by_defaults,
        };
        match result {
            Err(_) if self.passed.get() => Err(too_large(true)),
            Err(v) => Err(EncodeError::Violation(v)),
            Ok(()) if written > self.limit => Err(too_large(false)),
            Ok(()) => Ok(()),
        }
    }
}

/// So that [`Seed`] can take values read without serde (`packed`).
impl de::Error for Violation {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Violation(msg.to_string())
    }
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    node: usize,
    /// The default, pre-encoded.
    default: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record {
        name: String,
        fields: Vec<Field>,
        index: HashMap<String, usize>,
    },
    Enum {
        name: String,
        symbols: Vec<String>,
    },
    Fixed {
        name: String,
        size: usize,
    },
    /// A placeholder while a named type is being compiled (recursive schemas).
    Pending,
}

impl Node {
    /// The name a union branch is known by in the wrapped JSON form.
    fn branch_name(&self) -> &str {
        match self {
            Node::Null => "null",
            Node::Boolean => "boolean",
            Node::Int => "int",
            Node::Long => "long",
            Node::Float => "float",
            Node::Double => "double",
            Node::Bytes => "bytes",
            Node::String => "string",
            Node::Array(_) => "array",
            Node::Map(_) => "map",
            Node::Union(_) => "union",
            Node::Record { name, .. } | Node::Enum { name, .. } | Node::Fixed { name, .. } => name,
            Node::Pending => "?",
        }
    }
}

struct Compiler {
    nodes: Vec<Node>,
    named: HashMap<String, usize>,
    /// Field defaults to encode once every node exists.
    defaults: Vec<(usize, usize, serde_json::Value)>,
}

impl Compiler {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn compile(&mut self, s: &Schema) -> Result<usize, SchemaError> {
        Ok(match s {
            Schema::Null => self.push(Node::Null),
            Schema::Boolean => self.push(Node::Boolean),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.push(Node::Int),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.push(Node::Long),
            Schema::Float => self.push(Node::Float),
            Schema::Double => self.push(Node::Double),
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => self.push(Node::Bytes),
            Schema::String | Schema::Uuid(UuidSchema::String) => self.push(Node::String),
            Schema::Fixed(f)
            | Schema::Uuid(UuidSchema::Fixed(f))
            | Schema::Duration(f)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => {
                let id = self.push(Node::Fixed {
                    name: f.name.fullname(None),
                    size: f.size,
                });
                self.named.insert(f.name.fullname(None), id);
                id
            }
            Schema::Array(a) => {
                let items = self.compile(&a.items)?;
                self.push(Node::Array(items))
            }
            Schema::Map(m) => {
                let values = self.compile(&m.types)?;
                self.push(Node::Map(values))
            }
            Schema::Union(u) => {
                let branches = u
                    .variants()
                    .iter()
                    .map(|v| self.compile(v))
                    .collect::<Result<_, _>>()?;
                self.push(Node::Union(branches))
            }
            Schema::Enum(e) => {
                let id = self.push(Node::Enum {
                    name: e.name.fullname(None),
                    symbols: e.symbols.clone(),
                });
                self.named.insert(e.name.fullname(None), id);
                id
            }
            Schema::Record(r) => self.record(r)?,
            Schema::Ref { name } => {
                let full = name.fullname(None);
                *self
                    .named
                    .get(&full)
                    .ok_or_else(|| SchemaError::Parse(format!("unknown type `{full}`")))?
            }
        })
    }

    /// A record: its node is reserved first (as pending) so that its fields may refer to
    /// it; defaults are kept to be filled in once every type is known.
    fn record(&mut self, r: &apache_avro::schema::RecordSchema) -> Result<usize, SchemaError> {
        let id = self.push(Node::Pending);
        self.named.insert(r.name.fullname(None), id);
        let mut fields = Vec::with_capacity(r.fields.len());
        let mut index = HashMap::new();
        for (i, f) in r.fields.iter().enumerate() {
            let node = self.compile(&f.schema)?;
            if let Some(d) = &f.default {
                self.defaults.push((id, i, d.clone()));
            }
            index.insert(f.name.clone(), i);
            fields.push(Field {
                name: f.name.clone(),
                node,
                default: None,
            });
        }
        self.nodes[id] = Node::Record {
            name: r.name.fullname(None),
            fields,
            index,
        };
        Ok(id)
    }
}

impl AvroSchema {
    /// Parse and compile a schema from its JSON text. A schema whose field defaults would
    /// expand without measure is refused before they are built ([`defaults::check`]).
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SchemaError::Parse(e.to_string()))?;
        defaults::check(&json).map_err(SchemaError::Parse)?;
        let schema = Schema::parse(&json).map_err(|e| SchemaError::Parse(e.to_string()))?;
        let mut c = Compiler {
            nodes: Vec::new(),
            named: HashMap::new(),
            defaults: Vec::new(),
        };
        let root = c.compile(&schema)?;
        let mut compiled = AvroSchema {
            plans: packed::plans(&c.nodes),
            nodes: c.nodes,
            root,
            canonical: schema.canonical_form(),
        };
        for (record, i, value) in c.defaults {
            let Node::Record { fields, .. } = &compiled.nodes[record] else {
                unreachable!("defaults are only recorded for records")
            };
            // Avro applies a union field's default to the union's first branch.
            let mut node = fields[i].node;
            if let Node::Union(branches) = &compiled.nodes[node] {
                node = branches[0];
            }
            let mut out = Vec::new();
            compiled
                .encode_value(node, &value, &mut out)
                .map_err(|e| SchemaError::Default {
                    field: fields[i].name.clone(),
                    reason: e.0,
                })?;
            if let Node::Union(_) = &compiled.nodes[fields[i].node] {
                out.insert(0, 0); // branch 0, zig-zag encoded
            }
            let Node::Record { fields, .. } = &mut compiled.nodes[record] else {
                unreachable!()
            };
            fields[i].default = Some(out);
        }
        Ok(compiled)
    }

    /// The schema's Parsing Canonical Form.
    pub fn canonical_form(&self) -> &str {
        &self.canonical
    }

    fn encode_value(
        &self,
        node: usize,
        value: &serde_json::Value,
        out: &mut Vec<u8>,
    ) -> Result<(), Violation> {
        Seed {
            schema: self,
            node,
            out,
            bound: &Bound::new(usize::MAX),
        }
        .deserialize(value)
        .map_err(|e: serde_json::Error| Violation(e.to_string()))
    }

    /// Validate `json` (a record value as JSON text) and append its Avro binary encoding to
    /// `out`, refused if that would take more than `limit` bytes. On error `out` is left as
    /// it was.
    pub fn encode_json(
        &self,
        json: &str,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let start = out.len();
        let bound = Bound::new(limit);
        let mut de = serde_json::Deserializer::from_str(json);
        let result = Seed {
            schema: self,
            node: self.root,
            out,
            bound: &bound,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| Violation(e.to_string()));
        bound
            .verdict(out.len() - start, result)
            .inspect_err(|_| out.truncate(start))
    }

    /// Validate `packed` (a record value as MessagePack) and append its Avro binary encoding
    /// to `out`: the same bytes [`AvroSchema::encode_json`] writes for the same value,
    /// refused alike past `limit` bytes. On error `out` is left as it was. Nesting is
    /// bounded as serde_json bounds JSON's, so a crafted value cannot exhaust the stack.
    pub fn encode_packed(
        &self,
        packed: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let start = out.len();
        let bound = Bound::new(limit);
        let result = self.transcode_packed(packed, &bound, out);
        bound
            .verdict(out.len() - start, result)
            .inspect_err(|_| out.truncate(start))
    }

    /// Decode one Avro datum of this schema into JSON (unions shown as their plain value).
    ///
    /// Values that take no bytes (a `null`, an empty record) let a block count promise
    /// any number of items for free, so a datum may hold at most [`MAX_DECODED_VALUES`]
    /// values beyond one per byte, nested at most [`MAX_DECODE_DEPTH`] deep: a crafted
    /// record read back for display or `--verify` cannot loop, allocate without end or
    /// exhaust the stack.
    pub fn decode_to_json(&self, mut datum: &[u8]) -> Result<serde_json::Value, Violation> {
        let mut budget = Budget {
            values: MAX_DECODED_VALUES.saturating_add(datum.len()),
            depth: 0,
        };
        let v = self.decode(self.root, &mut datum, &mut budget)?;
        if !datum.is_empty() {
            return Err(Violation(format!(
                "{} bytes left over after the datum",
                datum.len()
            )));
        }
        Ok(v)
    }

    fn decode(
        &self,
        node: usize,
        buf: &mut &[u8],
        budget: &mut Budget,
    ) -> Result<serde_json::Value, Violation> {
        use serde_json::Value;
        budget.value()?;
        budget.depth += 1;
        if budget.depth > MAX_DECODE_DEPTH {
            return Err(Violation(format!(
                "the datum nests deeper than {MAX_DECODE_DEPTH} levels"
            )));
        }
        let short = || Violation("datum is truncated".into());
        let v = match &self.nodes[node] {
            Node::Union(branches) => {
                let i = read_long(buf).ok_or_else(short)?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| Violation(format!("union branch {i} out of range")))?;
                self.decode(*b, buf, budget)?
            }
            Node::Array(items) => {
                let mut out = Vec::new();
                while let Some(n) = next_block(buf)? {
                    for _ in 0..n {
                        out.push(self.decode(*items, buf, budget)?);
                    }
                }
                Value::Array(out)
            }
            Node::Map(values) => {
                let mut out = serde_json::Map::new();
                while let Some(n) = next_block(buf)? {
                    for _ in 0..n {
                        let klen = read_len(buf).ok_or_else(short)?;
                        let k = String::from_utf8(take(buf, klen)?.to_vec())
                            .map_err(|e| Violation(e.to_string()))?;
                        out.insert(k, self.decode(*values, buf, budget)?);
                    }
                }
                Value::Object(out)
            }
            Node::Record { fields, .. } => {
                let mut out = serde_json::Map::new();
                for f in fields {
                    out.insert(f.name.clone(), self.decode(f.node, buf, budget)?);
                }
                Value::Object(out)
            }
            Node::Pending => unreachable!("compiled schemas have no pending nodes"),
            scalar => decode_scalar(scalar, buf)?,
        };
        budget.depth -= 1;
        Ok(v)
    }
}

/// How much more a datum being decoded may hold: values beyond its bytes, and nesting.
struct Budget {
    values: usize,
    depth: usize,
}

impl Budget {
    /// Count one value.
    fn value(&mut self) -> Result<(), Violation> {
        self.values = self.values.checked_sub(1).ok_or_else(|| {
            Violation(format!(
                "the datum holds more values than its bytes can ({MAX_DECODED_VALUES} beyond one per byte): a block count is out of proportion"
            ))
        })?;
        Ok(())
    }
}

/// Nesting a datum may have when decoded for display (a recursive schema lets each level
/// cost a byte, and decoding recurses).
pub const MAX_DECODE_DEPTH: usize = 256;

/// The next `n` bytes of `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Violation> {
    if buf.len() < n {
        return Err(Violation("datum is truncated".into()));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The item count of an array's or map's next block; `None` at the end.
fn next_block(buf: &mut &[u8]) -> Result<Option<usize>, Violation> {
    match read_block_len(buf) {
        Some(0) => Ok(None),
        Some(n) => Ok(Some(n)),
        None => Err(Violation("datum is truncated".into())),
    }
}

/// A value of a node that holds no other: null, boolean, numbers, bytes, string, fixed,
/// enum.
fn decode_scalar(node: &Node, buf: &mut &[u8]) -> Result<serde_json::Value, Violation> {
    use serde_json::Value;
    let short = || Violation("datum is truncated".into());
    let chars = |b: &[u8]| Value::String(b.iter().map(|&c| char::from(c)).collect());
    Ok(match node {
        Node::Null => Value::Null,
        Node::Boolean => Value::Bool(take(buf, 1)?[0] != 0),
        Node::Int | Node::Long => Value::from(read_long(buf).ok_or_else(short)?),
        Node::Float => {
            let b = take(buf, 4)?;
            let f = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            // Shortest text that round-trips as f32, shown as a double: 48.2, not
            // 48.200000762939453.
            let shown: f64 = f.to_string().parse().unwrap_or(f64::from(f));
            serde_json::Number::from_f64(shown).map_or(Value::Null, Value::Number)
        }
        Node::Double => {
            let b = take(buf, 8)?;
            let f = f64::from_le_bytes(b.try_into().expect("8 bytes"));
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        Node::String => {
            let n = read_len(buf).ok_or_else(short)?;
            let b = take(buf, n)?;
            Value::String(String::from_utf8(b.to_vec()).map_err(|e| Violation(e.to_string()))?)
        }
        Node::Bytes => {
            let n = read_len(buf).ok_or_else(short)?;
            chars(take(buf, n)?)
        }
        Node::Fixed { size, .. } => chars(take(buf, *size)?),
        Node::Enum { symbols, .. } => {
            let i = read_long(buf).ok_or_else(short)?;
            Value::String(
                usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| Violation(format!("enum index {i} out of range")))?
                    .clone(),
            )
        }
        _ => unreachable!("containers are decoded by AvroSchema::decode"),
    })
}

/// Nesting a packed value may have: serde_json's limit for JSON, so that both forms of a
/// value are read alike.
const MAX_PACKED_DEPTH: usize = 128;

/// Values a decoded datum may hold beyond one per byte.
pub const MAX_DECODED_VALUES: usize = 1_000_000;

/// Inlined: a record's fields call it several times per message, each for a byte or two.
#[inline]
fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn read_long(buf: &mut &[u8]) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

fn read_len(buf: &mut &[u8]) -> Option<usize> {
    usize::try_from(read_long(buf)?).ok()
}

/// A block count; a negative count is followed by the block's byte size, which we skip.
fn read_block_len(buf: &mut &[u8]) -> Option<usize> {
    let n = read_long(buf)?;
    if n < 0 {
        read_long(buf)?;
    }
    usize::try_from(n.unsigned_abs()).ok()
}

/// An array's or map's items: one block of `n` encoded items (if any), then the empty
/// block that ends the sequence.
fn write_blocks(out: &mut Vec<u8>, n: i64, body: &[u8]) {
    if n > 0 {
        write_long(out, n);
        out.extend_from_slice(body);
    }
    write_long(out, 0);
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Avro's JSON form of bytes/fixed: a string whose code points 0-255 are the bytes.
fn latin1<E: de::Error>(s: &str) -> Result<Vec<u8>, E> {
    s.chars()
        .map(|c| {
            u8::try_from(u32::from(c)).map_err(|_| {
                E::custom(format!(
                    "bytes are written as a string of code points 0-255, found {c:?}"
                ))
            })
        })
        .collect()
}

/// Encodes the JSON value it is fed as an Avro datum of `node`.
struct Seed<'a> {
    schema: &'a AvroSchema,
    node: usize,
    out: &'a mut Vec<u8>,
    bound: &'a Bound,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed<'_> {
    fn node(&self) -> &Node {
        &self.schema.nodes[self.node]
    }

    fn expected(&self) -> String {
        match self.node() {
            Node::Union(bs) => {
                let names: Vec<&str> = bs
                    .iter()
                    .map(|&b| self.schema.nodes[b].branch_name())
                    .collect();
                format!("one of [{}]", names.join(", "))
            }
            Node::Record { name, .. } => format!("record {name}"),
            n => n.branch_name().to_owned(),
        }
    }

    fn mismatch<E: de::Error>(&self, found: &str) -> E {
        E::custom(format!("expected {}, found {found}", self.expected()))
    }

    /// For a union, pick the first branch that `accepts` and write its index.
    fn branch<E: de::Error>(
        &mut self,
        found: &str,
        accepts: impl Fn(&Node) -> bool,
    ) -> Result<Option<usize>, E> {
        let Node::Union(branches) = &self.schema.nodes[self.node] else {
            return Ok(None);
        };
        match branches
            .iter()
            .position(|&b| accepts(&self.schema.nodes[b]))
        {
            Some(i) => {
                write_long(self.out, i as i64);
                Ok(Some(branches[i]))
            }
            None => Err(self.mismatch(found)),
        }
    }

    fn into_branch(self, node: usize) -> Self {
        Seed { node, ..self }
    }

    /// A seed for a value inside this one (an item, an entry, a field), writing to the
    /// same output.
    fn child(&mut self, node: usize) -> Seed<'_> {
        Seed {
            schema: self.schema,
            node,
            out: &mut *self.out,
            bound: self.bound,
        }
    }

    /// Ready this seed for an object (a map in MessagePack). In a union with exactly one
    /// record or map branch, that branch is written and taken; `true` when the union has
    /// none or several, so the object must be the wrapped form `{"<branch>": value}`.
    fn object_branch(&mut self) -> bool {
        let Node::Union(branches) = &self.schema.nodes[self.node] else {
            return false;
        };
        let mut composite = branches
            .iter()
            .enumerate()
            .filter(|&(_, &b)| matches!(self.schema.nodes[b], Node::Record { .. } | Node::Map(_)));
        match (composite.next(), composite.next()) {
            (Some((i, &b)), None) => {
                write_long(self.out, i as i64);
                self.node = b;
                false
            }
            _ => true,
        }
    }

    /// The branch a wrapped union value's key names, its index written.
    fn wrapped_branch<E: de::Error>(&mut self, key: &str) -> Result<usize, E> {
        let Node::Union(branches) = &self.schema.nodes[self.node] else {
            unreachable!("wrapped values are asked for by unions only")
        };
        let Some(i) = branches
            .iter()
            .position(|&b| self.schema.nodes[b].branch_name() == key)
        else {
            return Err(E::custom(format!(
                "`{key}` is not a branch of {}; write a union value as {{\"<branch>\": value}}",
                self.expected()
            )));
        };
        write_long(self.out, i as i64);
        Ok(branches[i])
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expected())
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        if let Some(b) = self.branch("null", |n| matches!(n, Node::Null))? {
            return self.into_branch(b).visit_unit();
        }
        match self.node() {
            Node::Null => Ok(()),
            _ => Err(self.mismatch("null")),
        }
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        if let Some(b) = self.branch("a boolean", |n| matches!(n, Node::Boolean))? {
            return self.into_branch(b).visit_bool(v);
        }
        match self.node() {
            Node::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            _ => Err(self.mismatch("a boolean")),
        }
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        let fits_int = i32::try_from(v).is_ok();
        if let Some(b) = self.branch("an integer", |n| match n {
            Node::Int => fits_int,
            Node::Long | Node::Float | Node::Double => true,
            _ => false,
        })? {
            return self.into_branch(b).visit_i64(v);
        }
        match self.node() {
            Node::Int if fits_int => write_long(self.out, v),
            Node::Int => {
                return Err(E::custom(format!("{v} does not fit an Avro int (32-bit)")));
            }
            Node::Long => write_long(self.out, v),
            Node::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            Node::Double => self.out.extend_from_slice(&(v as f64).to_le_bytes()),
            _ => return Err(self.mismatch("an integer")),
        }
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::custom(format!("{v} does not fit an Avro long (64-bit)"))),
        }
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            // JSON has no NaN or infinity: serde_json writes them as `null`.
            return self.visit_unit();
        }
        if let Some(b) = self.branch("a number with a fraction", |n| {
            matches!(n, Node::Float | Node::Double)
        })? {
            return self.into_branch(b).visit_f64(v);
        }
        match self.node() {
            Node::Double => self.out.extend_from_slice(&v.to_le_bytes()),
            Node::Float if v.is_finite() && v.abs() > f64::from(f32::MAX) => {
                return Err(E::custom(format!("{v} is out of range for an Avro float")));
            }
            Node::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            _ => return Err(self.mismatch("a number with a fraction")),
        }
        Ok(())
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<(), E> {
        // As JSON carries it: the shortest decimal that reads back as this f32 (0.1, not
        // 0.10000000149011612), which is also what a double field then holds.
        let shown = if v.is_finite() {
            v.to_string().parse().unwrap_or(f64::from(v))
        } else {
            f64::NAN
        };
        self.visit_f64(shown)
    }

    fn visit_bytes<E: de::Error>(mut self, v: &[u8]) -> Result<(), E> {
        if let Some(b) = self.branch("bytes", |n| match n {
            Node::Bytes => true,
            Node::Fixed { size, .. } => *size == v.len(),
            _ => false,
        })? {
            return self.into_branch(b).visit_bytes(v);
        }
        match self.node() {
            Node::Bytes => write_bytes(self.out, v),
            Node::Fixed { name, size } if v.len() != *size => {
                return Err(E::custom(format!(
                    "fixed {name} takes {size} bytes, got {}",
                    v.len()
                )));
            }
            Node::Fixed { .. } => self.out.extend_from_slice(v),
            _ => return Err(self.mismatch("bytes (or a string that is not UTF-8)")),
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        if let Some(b) = self.branch("a string", |n| match n {
            Node::String | Node::Bytes => true,
            Node::Enum { symbols, .. } => symbols.iter().any(|s| s == v),
            Node::Fixed { size, .. } => v.chars().count() == *size,
            _ => false,
        })? {
            return self.into_branch(b).visit_str(v);
        }
        match self.node() {
            Node::String => write_bytes(self.out, v.as_bytes()),
            Node::Bytes => write_bytes(self.out, &latin1::<E>(v)?),
            Node::Enum { name, symbols } => match symbols.iter().position(|s| s == v) {
                Some(i) => write_long(self.out, i as i64),
                None => {
                    return Err(E::custom(format!(
                        "{v:?} is not a symbol of enum {name} ({})",
                        symbols.join(", ")
                    )));
                }
            },
            Node::Fixed { name, size } => {
                let bytes = latin1::<E>(v)?;
                if bytes.len() != *size {
                    return Err(E::custom(format!(
                        "fixed {name} takes {size} bytes, got {}",
                        bytes.len()
                    )));
                }
                self.out.extend_from_slice(&bytes);
            }
            _ => return Err(self.mismatch("a string")),
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if let Some(b) = self.branch("an array", |n| matches!(n, Node::Array(_)))? {
            return self.into_branch(b).visit_seq(seq);
        }
        let Node::Array(items) = *self.node() else {
            return Err(self.mismatch("an array"));
        };
        // One block, count first: buffer the items so the count is known.
        let mut body = Vec::new();
        let mut n: i64 = 0;
        while seq
            .next_element_seed(Seed {
                schema: self.schema,
                node: items,
                out: &mut body,
                bound: self.bound,
            })
            .map_err(|e| de::Error::custom(format!("[{n}]: {e}")))?
            .is_some()
        {
            n += 1;
        }
        write_blocks(self.out, n, &body);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.object_branch() {
            let Some(Key(key)) = map.next_key::<Key>()? else {
                return Err(self.mismatch("an empty object"));
            };
            let branch = self.wrapped_branch(&key)?;
            map.next_value_seed(self.child(branch))?;
            if map.next_key::<Key>()?.is_some() {
                return Err(de::Error::custom(
                    "a wrapped union value must have exactly one key",
                ));
            }
            return Ok(());
        }
        match *self.node() {
            Node::Map(values) => {
                let mut body = Vec::new();
                let mut n: i64 = 0;
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    write_bytes(&mut body, k.as_bytes());
                    map.next_value_seed(Seed {
                        schema: self.schema,
                        node: values,
                        out: &mut body,
                        bound: self.bound,
                    })
                    .map_err(|e| de::Error::custom(format!("[{k:?}]: {e}")))?;
                    n += 1;
                }
                write_blocks(self.out, n, &body);
                Ok(())
            }
            Node::Record { .. } => encode_record(
                self.schema,
                self.node,
                self.out,
                self.bound,
                Access(map, std::marker::PhantomData),
            ),
            _ => Err(self.mismatch("an object")),
        }
    }
}

/// A map key or record field name, borrowed from the input when it can be; an integer or
/// boolean key is taken as its text, as serde_json writes it.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

impl AsRef<[u8]> for Key<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(if v { "true" } else { "false" })))
    }
}

/// A record's fields as they arrive, from JSON or MessagePack: a name, then its value.
trait Fields {
    /// A field name as sent: text, or bytes that may not be.
    type Name: AsRef<[u8]>;
    type Error: de::Error;
    /// The next field's name; `None` after the last.
    fn next_name(&mut self) -> Result<Option<Self::Name>, Self::Error>;
    /// The value of the field just named, into `seed`.
    fn next_value(&mut self, seed: Seed<'_>) -> Result<(), Self::Error>;
}

/// A serde map's entries as a record's fields.
struct Access<'de, A>(A, std::marker::PhantomData<&'de ()>);

impl<'de, A: MapAccess<'de>> Fields for Access<'de, A> {
    type Name = Key<'de>;
    type Error = A::Error;

    fn next_name(&mut self) -> Result<Option<Key<'de>>, A::Error> {
        self.0.next_key()
    }

    fn next_value(&mut self, seed: Seed<'_>) -> Result<(), A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// Encode a record's fields, which JSON may give in any order, in schema order. Fields are
/// appended as they come; when they came in schema order (the usual case: serde writes struct
/// fields in declaration order) nothing more is done, otherwise the segments are reordered.
fn encode_record<F: Fields>(
    schema: &AvroSchema,
    node: usize,
    out: &mut Vec<u8>,
    bound: &Bound,
    mut map: F,
) -> Result<(), F::Error> {
    let Node::Record {
        name,
        fields,
        index,
    } = &schema.nodes[node]
    else {
        unreachable!("called for records only")
    };
    let start = out.len();
    // (field index, segment start) in arrival order; on the stack for most records.
    let mut seen: SmallVec<[(usize, usize); 16]> = SmallVec::new();
    // Which of the first 64 fields have come, so that a repeat is found without a scan.
    let mut came: u64 = 0;
    let mut in_order = true;
    while let Some(sent) = map.next_name()? {
        // Fields usually come in schema order (serde writes a struct's in declaration
        // order): try the next one before hashing the name. A name equal to a field's is
        // that field, and text; any other is looked up only if it is text.
        let sent = sent.as_ref();
        let key = || String::from_utf8_lossy(sent);
        let next = fields.get(seen.len()).filter(|f| f.name.as_bytes() == sent);
        let Some(i) = next.map(|_| seen.len()).or_else(|| {
            std::str::from_utf8(sent)
                .ok()
                .and_then(|sent| index.get(sent).copied())
        }) else {
            return Err(de::Error::custom(format!(
                "record {name} has no field `{}`",
                key()
            )));
        };
        let repeat = match u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i)) {
            Some(bit) => {
                let repeat = came & bit != 0;
                came |= bit;
                repeat
            }
            None => seen.iter().any(|&(j, _)| j == i),
        };
        if repeat {
            return Err(de::Error::custom(format!(
                "field `{}` appears twice",
                key()
            )));
        }
        if seen.len() != i {
            in_order = false;
        }
        seen.push((i, out.len()));
        map.next_value(Seed {
            schema,
            node: fields[i].node,
            out: &mut *out,
            bound,
        })
        .map_err(|e| de::Error::custom(format!("field `{}`: {e}", key())))?;
    }
    if in_order && seen.len() == fields.len() {
        return Ok(());
    }
    // Reorder: cut the arrived segments out, then write every field in schema order.
    let tail = out.split_off(start);
    let mut segments: Vec<Option<&[u8]>> = vec![None; fields.len()];
    for (k, &(i, at)) in seen.iter().enumerate() {
        let end = seen
            .get(k + 1)
            .map_or(tail.len(), |&(_, next)| next - start);
        segments[i] = Some(&tail[at - start..end]);
    }
    for (f, seg) in fields.iter().zip(segments) {
        match (seg, &f.default) {
            (Some(bytes), _) => out.extend_from_slice(bytes),
            (None, Some(default)) => {
                bound
                    .take_default(default.len())
                    .map_err(de::Error::custom)?;
                out.extend_from_slice(default);
            }
            (None, None) => {
                return Err(de::Error::custom(format!(
                    "record {name} is missing field `{}`, which has no default",
                    f.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AvroValue;

    const READING: &str = r#"{"type":"record","name":"R","namespace":"t","fields":[
        {"name":"id","type":"string"},
        {"name":"n","type":"int"},
        {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"x","type":"double"},
        {"name":"f","type":["null","float"],"default":null},
        {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
        {"name":"m","type":{"type":"map","values":"long"},"default":{}},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]},"default":"A"},
        {"name":"ok","type":"boolean","default":true}
    ]}"#;

    /// Our encoding must be exactly what apache-avro reads back for the same schema.
    fn roundtrip(schema: &str, json: &str) -> AvroValue {
        let s = AvroSchema::parse(schema).unwrap();
        let mut out = Vec::new();
        s.encode_json(json, usize::MAX, &mut out).unwrap();
        let parsed = Schema::parse_str(schema).unwrap();
        apache_avro::reader::datum::GenericDatumReader::builder(&parsed)
            .build()
            .unwrap()
            .read_value(&mut out.as_slice())
            .unwrap()
    }

    #[test]
    fn encodes_what_apache_avro_decodes() {
        let v = roundtrip(
            READING,
            r#"{"id":"d1","n":-3,"t":1700000000000,"x":21.5,"f":1.5,"tags":["a","b"],"m":{"k":7},"e":"B","ok":false}"#,
        );
        let AvroValue::Record(fields) = v else {
            panic!()
        };
        assert_eq!(fields[0].1, AvroValue::String("d1".into()));
        assert_eq!(fields[1].1, AvroValue::Int(-3));
        assert_eq!(fields[2].1, AvroValue::TimestampMillis(1_700_000_000_000));
        assert_eq!(fields[3].1, AvroValue::Double(21.5));
        assert_eq!(
            fields[4].1,
            AvroValue::Union(1, Box::new(AvroValue::Float(1.5)))
        );
        assert_eq!(
            fields[5].1,
            AvroValue::Array(vec![
                AvroValue::String("a".into()),
                AvroValue::String("b".into())
            ])
        );
        assert_eq!(fields[7].1, AvroValue::Enum(1, "B".into()));
        assert_eq!(fields[8].1, AvroValue::Boolean(false));
    }

    #[test]
    fn any_field_order_and_defaults_give_the_same_bytes() {
        let s = AvroSchema::parse(READING).unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        s.encode_json(
            r#"{"id":"d","n":1,"t":2,"x":3.0,"f":null,"tags":[],"m":{},"e":"A","ok":true}"#,
            usize::MAX,
            &mut a,
        )
        .unwrap();
        s.encode_json(r#"{"x":3.0,"t":2,"n":1,"id":"d"}"#, usize::MAX, &mut b)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn violations_name_the_field_and_problem() {
        let s = AvroSchema::parse(READING).unwrap();
        let mut out = vec![9];
        let err = |json: &str, out: &mut Vec<u8>| {
            s.encode_json(json, usize::MAX, out)
                .unwrap_err()
                .to_string()
        };
        let base = r#""id":"d","t":2,"x":3.0"#;
        assert!(err(&format!(r#"{{{base},"n":"one"}}"#), &mut out).contains("field `n`"));
        assert!(
            err(&format!(r#"{{{base},"n":3000000000}}"#), &mut out)
                .contains("does not fit an Avro int")
        );
        assert!(err(&format!(r#"{{{base},"n":1,"zz":1}}"#), &mut out).contains("no field `zz`"));
        assert!(err(r#"{"id":"d","n":1,"t":2}"#, &mut out).contains("missing field `x`"));
        assert!(err(&format!(r#"{{{base},"n":1,"e":"C"}}"#), &mut out).contains("not a symbol"));
        assert!(
            err(&format!(r#"{{{base},"n":1,"f":"x"}}"#), &mut out).contains("one of [null, float]")
        );
        assert!(err(&format!(r#"{{{base},"n":1}} trailing"#), &mut out).contains("trailing"));
        assert!(err("[1]", &mut out).contains("record t.R"));
        assert_eq!(out, vec![9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn ambiguous_unions_take_the_wrapped_form() {
        let schema = r#"{"type":"record","name":"W","fields":[{"name":"u","type":[
            {"type":"record","name":"A","fields":[{"name":"a","type":"int"}]},
            {"type":"record","name":"B","fields":[{"name":"b","type":"int"}]}]}]}"#;
        let AvroValue::Record(f) = roundtrip(schema, r#"{"u":{"B":{"b":4}}}"#) else {
            panic!()
        };
        let AvroValue::Union(1, _) = f[0].1 else {
            panic!("{:?}", f[0].1)
        };
    }

    #[test]
    fn recursive_schemas_compile() {
        let schema = r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},
            {"name":"next","type":["null","Node"],"default":null}]}"#;
        let s = AvroSchema::parse(schema).unwrap();
        let mut out = Vec::new();
        s.encode_json(r#"{"v":1,"next":{"v":2}}"#, usize::MAX, &mut out)
            .unwrap();
        assert_eq!(
            s.decode_to_json(&out).unwrap(),
            serde_json::json!({"v":1,"next":{"v":2,"next":null}})
        );
    }

    #[test]
    fn a_block_count_out_of_proportion_is_refused_not_looped() {
        let s = AvroSchema::parse(r#"{"type":"array","items":"null"}"#).unwrap();
        let mut datum = Vec::new();
        write_long(&mut datum, i64::MAX);
        datum.push(0);
        let err = s.decode_to_json(&datum).unwrap_err();
        assert!(err.0.contains("out of proportion"), "{}", err.0);
        // A modest array of nulls still reads.
        let mut datum = Vec::new();
        write_long(&mut datum, 1000);
        datum.push(0);
        assert_eq!(
            s.decode_to_json(&datum).unwrap().as_array().unwrap().len(),
            1000
        );
    }

    #[test]
    fn a_datum_nested_past_the_depth_bound_is_refused_not_a_stack_overflow() {
        let s = AvroSchema::parse(
            r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#,
        )
        .unwrap();
        // Each level costs one byte (the union's branch), so a megabyte could nest a
        // million deep.
        let nested = |levels: usize| {
            let mut datum = vec![2u8; levels];
            datum.push(0);
            datum
        };
        let err = s.decode_to_json(&nested(1_000_000)).unwrap_err();
        assert!(err.0.contains("nests deeper than"), "{}", err.0);
        let mut v = s.decode_to_json(&nested(100)).unwrap();
        let mut levels = 0;
        while let Some(next) = v.get_mut("next").map(serde_json::Value::take) {
            if next.is_null() {
                break;
            }
            levels += 1;
            v = next;
        }
        assert_eq!(levels, 100);
    }

    #[test]
    fn decode_shows_floats_as_written() {
        let s = AvroSchema::parse(
            r#"{"type":"record","name":"F","fields":[{"name":"f","type":"float"}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        s.encode_json(r#"{"f":48.2}"#, usize::MAX, &mut out)
            .unwrap();
        assert_eq!(
            s.decode_to_json(&out).unwrap(),
            serde_json::json!({"f": 48.2})
        );
    }

    #[test]
    fn bad_schemas_and_defaults_are_refused() {
        assert!(AvroSchema::parse("{").is_err());
        let bad_default =
            r#"{"type":"record","name":"D","fields":[{"name":"n","type":"int","default":"x"}]}"#;
        assert!(matches!(
            AvroSchema::parse(bad_default),
            Err(SchemaError::Default { .. }) | Err(SchemaError::Parse(_))
        ));
    }

    /// A value as MessagePack, the way the Rust SDK writes one (structs as maps).
    fn packed<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
            .unwrap();
        out
    }

    #[test]
    fn a_packed_value_gives_the_bytes_its_json_gives() {
        let s = AvroSchema::parse(READING).unwrap();
        for json in [
            r#"{"id":"d1","n":-3,"t":1700000000000,"x":21.5,"f":1.5,"tags":["a","b"],"m":{"k":7},"e":"B","ok":false}"#,
            r#"{"x":3.0,"t":2,"n":1,"id":"d"}"#,
            r#"{"id":"é","n":2147483647,"t":-1,"x":-0.0,"f":null,"tags":[],"m":{"a":-1,"b":2}}"#,
            r#"{"id":"","n":0,"t":0,"x":1e300,"f":3,"e":"A"}"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            s.encode_json(json, usize::MAX, &mut a).unwrap();
            s.encode_packed(&packed(&value), usize::MAX, &mut b)
                .unwrap();
            assert_eq!(a, b, "{json}");
        }
        let wrapped = r#"{"type":"record","name":"W","fields":[{"name":"u","type":[
            {"type":"record","name":"A","fields":[{"name":"a","type":"int"}]},
            {"type":"record","name":"B","fields":[{"name":"b","type":"int"}]}]}]}"#;
        let s = AvroSchema::parse(wrapped).unwrap();
        #[derive(serde::Serialize)]
        enum U {
            B { b: i32 },
        }
        #[derive(serde::Serialize)]
        struct W {
            u: U,
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.encode_json(r#"{"u":{"B":{"b":4}}}"#, usize::MAX, &mut a)
            .unwrap();
        s.encode_packed(&packed(&W { u: U::B { b: 4 } }), usize::MAX, &mut b)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn packed_floats_and_keys_are_taken_as_json_writes_them() {
        #[derive(serde::Serialize)]
        struct R {
            id: &'static str,
            n: i32,
            t: i64,
            x: f32,
            f: Option<f64>,
            m: std::collections::BTreeMap<u8, i64>,
        }
        let s = AvroSchema::parse(READING).unwrap();
        let value = R {
            id: "d",
            n: 1,
            t: 2,
            x: 0.1,
            f: Some(f64::NAN),
            m: [(7, 1)].into(),
        };
        let json = serde_json::to_string(&value).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.encode_json(&json, usize::MAX, &mut a).unwrap();
        s.encode_packed(&packed(&value), usize::MAX, &mut b)
            .unwrap();
        assert_eq!(a, b, "{json}");
        let shown = s.decode_to_json(&b).unwrap();
        assert_eq!(
            shown["x"],
            serde_json::json!(0.1),
            "an f32 keeps its decimal"
        );
        assert_eq!(
            shown["f"],
            serde_json::Value::Null,
            "NaN is null, as in JSON"
        );
        assert_eq!(shown["m"], serde_json::json!({"7": 1}));
    }

    #[test]
    fn packed_binary_fills_bytes_and_fixed() {
        let schema = r#"{"type":"record","name":"B","fields":[{"name":"b","type":"bytes"},
            {"name":"f","type":["null",{"type":"fixed","name":"F","size":2}]}]}"#;
        let s = AvroSchema::parse(schema).unwrap();
        #[derive(serde::Serialize)]
        struct B<'a> {
            #[serde(with = "bin")]
            b: &'a [u8],
            #[serde(with = "bin")]
            f: &'a [u8],
        }
        mod bin {
            pub fn serialize<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let mut out = Vec::new();
        s.encode_packed(
            &packed(&B {
                b: &[0, 255],
                f: &[1, 2],
            }),
            usize::MAX,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![4, 0, 255, 2, 1, 2]);
        let err = s
            .encode_packed(&packed(&B { b: &[], f: &[1] }), usize::MAX, &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("one of [null, F]"), "{err}");
    }

    #[test]
    fn bad_packed_values_are_violations_that_leave_the_buffer_alone() {
        let s = AvroSchema::parse(READING).unwrap();
        let good = packed(&serde_json::json!({"id":"d","n":1,"t":2,"x":3.0}));
        let mut out = vec![9];
        let mut err = |bytes: &[u8]| {
            s.encode_packed(bytes, usize::MAX, &mut out)
                .unwrap_err()
                .to_string()
        };
        let mut trailing = good.clone();
        trailing.push(0xc0);
        assert!(err(&trailing).contains("left over"));
        assert!(err(&good[..good.len() - 3]).contains("cut short"));
        assert!(err(&[]).contains("cut short"));
        assert!(
            err(&packed(
                &serde_json::json!({"id":"d","n":"1","t":2,"x":3.0})
            ))
            .contains("field `n`")
        );
        assert!(
            err(&packed(
                &serde_json::json!({"id":"d","n":1,"t":2,"x":3.0,"q":1})
            ))
            .contains("no field `q`")
        );
        // A string that is not UTF-8 is no string.
        let mut bad_utf8 = packed(&serde_json::json!({"id":"dd","n":1,"t":2,"x":3.0}));
        let at = bad_utf8.windows(2).position(|w| w == b"dd").unwrap();
        bad_utf8[at] = 0xff;
        assert!(err(&bad_utf8).to_lowercase().contains("utf"));
        // Markers that carry no value weir takes: an extension, and the one never used.
        let mut ext = packed(&serde_json::json!({"id":"d","n":1,"t":2}));
        ext[0] += 1;
        ext.extend_from_slice(&[0xa1, b'x', 0xd4, 1, 0]);
        assert!(err(&ext).contains("field `x`: expected double, found a MessagePack extension"));
        ext.truncate(ext.len() - 3);
        ext.push(0xc1);
        assert!(err(&ext).contains("0xc1"));
        // Nested past serde_json's depth: refused, not a stack overflow.
        let recursive = AvroSchema::parse(
            r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#,
        )
        .unwrap();
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            deep.extend_from_slice(&[0x81, 0xa4]);
            deep.extend_from_slice(b"next");
        }
        deep.push(0xc0);
        let mut out2 = Vec::new();
        assert!(
            recursive
                .encode_packed(&deep, usize::MAX, &mut out2)
                .unwrap_err()
                .to_string()
                .contains("depth")
        );
        assert_eq!(out, vec![9]);
        // At the bound itself, as rmp-serde and serde_json count it: 127 nested maps are
        // read, 128 are not, whichever way the value comes.
        for (levels, ok) in [(MAX_PACKED_DEPTH - 1, true), (MAX_PACKED_DEPTH, false)] {
            let mut packed = Vec::new();
            let mut json = String::new();
            for _ in 0..levels {
                packed.extend_from_slice(&[0x81, 0xa4]);
                packed.extend_from_slice(b"next");
                json.push_str(r#"{"next":"#);
            }
            packed.push(0xc0);
            json.push_str("null");
            json.push_str(&"}".repeat(levels));
            let mut direct = Vec::new();
            let verdict = recursive.encode_packed(&packed, usize::MAX, &mut direct);
            assert_eq!(verdict.is_ok(), ok, "{levels} levels: {verdict:?}");
            let mut from_json = Vec::new();
            assert_eq!(
                recursive
                    .encode_json(&json, usize::MAX, &mut from_json)
                    .is_ok(),
                ok
            );
            assert_eq!(
                verdict.ok().map(|()| direct),
                through_rmp_serde(&recursive, &packed).ok()
            );
        }
    }

    /// Every record shape the readers must agree on: unions plain and wrapped, bytes and
    /// fixed, maps in and out of unions, recursion.
    const WIDE: &str = r#"{"type":"record","name":"W","fields":[
        {"name":"id","type":"string"},
        {"name":"n","type":"int"},
        {"name":"t","type":"long"},
        {"name":"x","type":"double"},
        {"name":"f","type":["null","float"],"default":null},
        {"name":"d","type":["null","double"],"default":null},
        {"name":"l","type":["long","double"],"default":0},
        {"name":"g","type":["double","long"],"default":0.5},
        {"name":"i","type":["null","int","long"],"default":null},
        {"name":"s","type":["string","null"],"default":""},
        {"name":"ok","type":"boolean","default":true},
        {"name":"tags","type":{"type":"array","items":["null","string","long"]},"default":[]},
        {"name":"m","type":{"type":"map","values":"long"},"default":{}},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]},"default":"A"},
        {"name":"b","type":["null","bytes"],"default":null},
        {"name":"k","type":["null",{"type":"fixed","name":"K","size":2}],"default":null},
        {"name":"u","type":["null",
            {"type":"record","name":"P","fields":[{"name":"a","type":"int"}]},
            {"type":"record","name":"Q","fields":[{"name":"q","type":"string"}]}],"default":null},
        {"name":"o","type":["null",{"type":"map","values":"string"}],"default":null},
        {"name":"next","type":["null","W"],"default":null},
        {"name":"h","type":["null",{"type":"record","name":"H","fields":[
            {"name":"a","type":"int"},
            {"name":"s","type":"string","default":""},
            {"name":"d","type":["null","double"],"default":null},
            {"name":"v","type":["string","null"],"default":"-"},
            {"name":"w","type":["null","int","long"],"default":null},
            {"name":"b","type":"boolean","default":false}]}],"default":null}
    ]}"#;

    /// How rmp-serde reads MessagePack into the same visitor: the reference the direct
    /// reader must agree with.
    fn through_rmp_serde(s: &AvroSchema, packed: &[u8]) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        let mut de = rmp_serde::Deserializer::from_read_ref(packed);
        de.set_max_depth(MAX_PACKED_DEPTH);
        Seed {
            schema: s,
            node: s.root,
            out: &mut out,
            bound: &Bound::new(usize::MAX),
        }
        .deserialize(&mut de)
        .map_err(|e| Violation(e.to_string()))?;
        match de::IgnoredAny::deserialize(&mut de) {
            Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Ok(out)
            }
            _ => Err(Violation("bytes left over".into())),
        }
    }

    /// A generated value: objects keep the order their entries were made in.
    #[derive(Debug, Clone)]
    enum Gen {
        Leaf(serde_json::Value),
        List(Vec<Gen>),
        Object(Vec<(String, Gen)>),
    }

    impl serde::Serialize for Gen {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{SerializeMap, SerializeSeq};
            match self {
                Gen::Leaf(v) => v.serialize(s),
                Gen::List(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Gen::Object(entries) => {
                    let mut map = s.serialize_map(Some(entries.len()))?;
                    for (k, v) in entries {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
            }
        }
    }

    /// A value of `node` as the SDK's serde output would give it.
    fn valid_value(s: &AvroSchema, node: usize, rng: &mut impl rand::Rng, depth: usize) -> Gen {
        use serde_json::json;
        const TEXT: [&str; 5] = ["", "d", "é", "t-100", "ab"];
        let leaf = |v: serde_json::Value| Gen::Leaf(v);
        match &s.nodes[node] {
            Node::Null => leaf(serde_json::Value::Null),
            Node::Boolean => leaf(json!(rng.random::<bool>())),
            Node::Int => leaf(json!(rng.random::<i32>() >> rng.random_range(0..32))),
            Node::Long => leaf(json!(rng.random::<i64>() >> rng.random_range(0..64))),
            Node::Float => leaf(json!([0.5, -1.25, 3.0][rng.random_range(0..3)])),
            Node::Double => leaf(json!([0.1, -0.0, 1e300, 21.5][rng.random_range(0..4)])),
            Node::Bytes => leaf(json!(["", "\u{ff}\u{0}", "ab"][rng.random_range(0..3)])),
            Node::String => leaf(json!(TEXT[rng.random_range(0..TEXT.len())])),
            Node::Fixed { .. } => leaf(json!(["\u{1}\u{fe}", "zz"][rng.random_range(0..2)])),
            Node::Enum { symbols, .. } => leaf(json!(symbols[rng.random_range(0..symbols.len())])),
            Node::Array(items) => Gen::List(
                (0..rng.random_range(0..3))
                    .map(|_| valid_value(s, *items, rng, depth + 1))
                    .collect(),
            ),
            Node::Map(values) => {
                let mut entries: Vec<(String, Gen)> = Vec::new();
                for _ in 0..rng.random_range(0..3) {
                    let key = TEXT[rng.random_range(0..TEXT.len())].to_owned();
                    if entries.iter().all(|(k, _)| *k != key) {
                        entries.push((key, valid_value(s, *values, rng, depth + 1)));
                    }
                }
                Gen::Object(entries)
            }
            Node::Union(branches) => {
                // Deep down, null (the first branch here) ends the recursion.
                let i = if depth > 3 {
                    0
                } else {
                    rng.random_range(0..branches.len())
                };
                let v = valid_value(s, branches[i], rng, depth + 1);
                let composite =
                    |b: &usize| matches!(s.nodes[*b], Node::Record { .. } | Node::Map(_));
                if composite(&branches[i]) && branches.iter().filter(|b| composite(b)).count() > 1 {
                    Gen::Object(vec![(s.nodes[branches[i]].branch_name().to_owned(), v)])
                } else {
                    v
                }
            }
            Node::Record { fields, .. } => {
                // Often whole, as serde writes a struct (the transcoder's straight path).
                let whole = rng.random_bool(0.3);
                let mut entries: Vec<(String, Gen)> = Vec::new();
                for f in fields {
                    if f.default.is_none() || whole || rng.random_bool(0.7) {
                        entries.push((f.name.clone(), valid_value(s, f.node, rng, depth + 1)));
                    }
                }
                if rng.random_bool(0.2) {
                    entries.reverse();
                }
                Gen::Object(entries)
            }
            Node::Pending => unreachable!(),
        }
    }

    /// Any value at all, for putting in the wrong place.
    fn stray_value(rng: &mut impl rand::Rng) -> Gen {
        use serde_json::json;
        Gen::Leaf(match rng.random_range(0..9) {
            0 => serde_json::Value::Null,
            1 => json!(true),
            2 => json!(i64::MIN),
            3 => json!(u64::MAX),
            4 => json!(2.5),
            5 => json!("B"),
            6 => json!(["x", 1]),
            7 => json!({"a": 1}),
            _ => json!({"P": {"a": 1}, "Q": {"q": "x"}}),
        })
    }

    /// Replace one part of `v`, picked at random, by a stray value, or drop or repeat an
    /// entry of an object.
    fn mutate(v: &mut Gen, rng: &mut impl rand::Rng) {
        match v {
            Gen::Object(entries) if !entries.is_empty() && rng.random_bool(0.2) => {
                let at = rng.random_range(0..entries.len());
                if rng.random_bool(0.5) {
                    entries.remove(at);
                } else {
                    entries.push(entries[at].clone());
                }
            }
            Gen::List(items) if !items.is_empty() && rng.random_bool(0.7) => {
                let at = rng.random_range(0..items.len());
                mutate(&mut items[at], rng);
            }
            Gen::Object(entries) if !entries.is_empty() && rng.random_bool(0.7) => {
                let at = rng.random_range(0..entries.len());
                mutate(&mut entries[at].1, rng);
            }
            _ => *v = stray_value(rng),
        }
    }

    #[test]
    fn the_direct_reader_agrees_with_rmp_serde_and_with_json() {
        use rand::{Rng, SeedableRng};
        let s = AvroSchema::parse(WIDE).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(28);
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..20_000 {
            let mut value = valid_value(&s, s.root, &mut rng, 0);
            let as_given = rng.random_bool(0.4);
            if !as_given {
                mutate(&mut value, &mut rng);
            }
            let mut bytes = packed(&value);
            if !as_given && rng.random_bool(0.3) {
                // A byte changed, cut or added: markers, lengths and text go wrong.
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.random()),
                }
            }
            let mut direct = vec![7];
            let verdict = s
                .encode_packed(&bytes, usize::MAX, &mut direct)
                .map(|()| direct.split_off(1));
            let reference = through_rmp_serde(&s, &bytes);
            match (&verdict, &reference) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "case {case}: {value:?}"),
                (Err(_), Err(_)) => assert_eq!(direct, vec![7], "case {case}: output left alone"),
                _ => panic!(
                    "case {case}: {value:?} {bytes:x?}: direct {verdict:?}, rmp-serde {reference:?}"
                ),
            }
            if as_given {
                let mut from_json = Vec::new();
                let json = serde_json::to_string(&value).unwrap();
                s.encode_json(&json, usize::MAX, &mut from_json)
                    .unwrap_or_else(|e| panic!("case {case}: {json}: {e}"));
                assert_eq!(
                    verdict.as_ref().ok(),
                    Some(&from_json),
                    "case {case}: {json}"
                );
            }
            match verdict {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(
            accepted > 8_000 && refused > 4_000,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// A schema whose records default to a kilobyte each: an empty map (one byte of
    /// MessagePack, three of JSON) in `pads` writes the whole default.
    fn padded() -> AvroSchema {
        let fill = "x".repeat(1000);
        AvroSchema::parse(&format!(
            r#"{{"type":"record","name":"P","fields":[
                {{"name":"pads","type":{{"type":"array","items":{{"type":"record","name":"Pad",
                    "fields":[{{"name":"fill","type":"string","default":"{fill}"}}]}}}}}},
                {{"name":"xs","type":{{"type":"array","items":"double"}},"default":[]}}]}}"#
        ))
        .unwrap()
    }

    /// `{field: [{}, {}, …]}` with `n` empty maps, as MessagePack (`field` of 4 bytes: the
    /// count is bytes 7 to 10).
    fn empty_maps(field: &[u8; 4], n: u32) -> Vec<u8> {
        let mut packed = vec![0x81, 0xa4];
        packed.extend_from_slice(field);
        packed.push(0xdd);
        packed.extend_from_slice(&n.to_be_bytes());
        packed.extend(std::iter::repeat_n(0x80, n as usize));
        packed
    }

    #[test]
    fn defaults_are_bounded_while_they_are_written() {
        let s = padded();
        // 100,000 empty records: 100 MB of defaults from 100 KB of MessagePack.
        let packed = empty_maps(b"pads", 100_000);
        let json = format!(r#"{{"pads":[{}]}}"#, vec!["{}"; 100_000].join(","));
        let limit = 1 << 20;
        let too_large = Err(EncodeError::TooLarge {
            limit,
            by_defaults: true,
        });
        let mut out = vec![9];
        assert_eq!(s.encode_packed(&packed, limit, &mut out), too_large);
        // Refused as the limit was passed, not after 100 MB were written.
        assert!(out.capacity() < 4 * limit, "{}", out.capacity());
        assert_eq!(s.encode_json(&json, limit, &mut out), too_large);
        assert_eq!(out, vec![9], "a refusal leaves the output alone");
        // Refused before the end, too: a bad last item is never reached (a check only at
        // the end would call this a violation).
        let mut cut = packed.clone();
        cut[7..11].copy_from_slice(&100_001u32.to_be_bytes());
        cut.extend_from_slice(&[0x81, 0xa4, b'f', b'i', b'l', b'l', 0x05]);
        assert_eq!(s.encode_packed(&cut, limit, &mut out), too_large);
        let bad_last = json.replace("{}]", r#"{},{"fill":5}]"#);
        assert_eq!(s.encode_json(&bad_last, limit, &mut out), too_large);
        // Within the limit, the same value is written whole, and agrees both ways.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.encode_packed(&packed, 200 << 20, &mut a).unwrap();
        s.encode_json(&json, 200 << 20, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.len() > 100_000_000, "{}", a.len());
    }

    #[test]
    fn the_whole_encoding_is_bounded() {
        let s = padded();
        // 1,000 small integers as doubles: 1 KB of MessagePack, 8 KB of Avro, no defaults.
        let mut doubles = vec![0x82, 0xa4];
        doubles.extend_from_slice(b"pads");
        doubles.push(0x90);
        doubles.extend_from_slice(&[0xa2, b'x', b's', 0xdc]);
        doubles.extend_from_slice(&1000u16.to_be_bytes());
        doubles.extend(std::iter::repeat_n(0x01, 1000));
        let mut out = Vec::new();
        assert_eq!(
            s.encode_packed(&doubles, 4096, &mut out),
            Err(EncodeError::TooLarge {
                limit: 4096,
                by_defaults: false
            })
        );
        assert!(out.is_empty());
        s.encode_packed(&doubles, 9000, &mut out).unwrap();
        // An empty array, then a block of 1,000 (two bytes), the doubles, the end.
        assert_eq!(out.len(), 1 + 2 + 8000 + 1);
        // A value that breaks the schema is a violation, whatever its size.
        let bad = packed(&serde_json::json!({"pads": [{"fill": 5}]}));
        assert!(matches!(
            s.encode_packed(&bad, 0, &mut out),
            Err(EncodeError::Violation(_))
        ));
    }

    #[test]
    fn defaults_that_write_nothing_still_count() {
        // 2,000 null-default fields: each empty record writes 2,000 bytes of branch indexes,
        // and a record of empty records (zero bytes each) would write none at all.
        let fields: Vec<String> = (0..2000)
            .map(|i| format!(r#"{{"name":"f{i}","type":["null","long"],"default":null}}"#))
            .collect();
        let s = AvroSchema::parse(&format!(
            r#"{{"type":"record","name":"W","fields":[{{"name":"many","type":{{"type":"array",
                "items":{{"type":"record","name":"M","fields":[{}]}}}}}}]}}"#,
            fields.join(",")
        ))
        .unwrap();
        let empty = AvroSchema::parse(
            r#"{"type":"record","name":"W","fields":[{"name":"many","type":{"type":"array",
                "items":{"type":"record","name":"M","fields":[
                    {"name":"e","type":{"type":"record","name":"E","fields":[]},"default":{}}]}}}]}"#,
        )
        .unwrap();
        let packed = empty_maps(b"many", 100_000);
        let mut out = Vec::new();
        for schema in [&s, &empty] {
            assert_eq!(
                schema.encode_packed(&packed, 50_000, &mut out),
                Err(EncodeError::TooLarge {
                    limit: 50_000,
                    by_defaults: true
                })
            );
        }
        // 100,000 defaults of no bytes fit a limit of 100,000.
        empty.encode_packed(&packed, 100_000, &mut out).unwrap();
    }
}
