//! MessagePack to Avro, read straight off the bytes with the schema in hand.
//!
//! The same [`Seed`] that takes JSON's values takes each scalar here, so a value gives the
//! same Avro bytes and the same verdict either way; only the reading differs. A container's
//! length comes first in MessagePack, so an array's or a map's block count is written before
//! its items with nothing buffered, and a record's field names are compared as bytes (a
//! name that equals a field's is that field, UTF-8 by construction). A string that is not
//! UTF-8 is taken as bytes, as `rmp-serde` takes it, and is refused where text is due.
//!
//! Two shortcuts keep the common case cheap without a second set of rules. A scalar of a
//! plain kind is written by its node's [`Plans`], decided once per schema from the rules the
//! seed follows. A record whose every field came in schema order as such a scalar (a struct,
//! as serde writes it) is written straight ([`Transcoder::in_order`]); any other record goes
//! back, untouched, to [`encode_record`].

use super::{
    AvroSchema, Bound, Field, Fields, MAX_PACKED_DEPTH, Node, Seed, Violation, encode_record,
};
use super::{write_bytes, write_long};
use rmp::Marker;
use serde::de::Visitor;
use std::borrow::Cow;

/// One MessagePack item: a scalar whole, a container by its length.
#[derive(Clone, Copy)]
enum Item<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Uint(u64),
    F32(f32),
    F64(f64),
    /// Text as sent: checked for UTF-8 only where text is due.
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext,
}

/// A cursor over the value's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Violation> {
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(Violation(format!(
                "the value is cut short: {n} more bytes are due at byte {} of {}",
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Violation> {
        Ok(self.take(N)?.try_into().expect("take gives N bytes"))
    }

    fn len8(&mut self) -> Result<usize, Violation> {
        Ok(self.array::<1>()?[0].into())
    }

    fn len16(&mut self) -> Result<usize, Violation> {
        Ok(u16::from_be_bytes(self.array()?).into())
    }

    fn len32(&mut self) -> Result<usize, Violation> {
        usize::try_from(u32::from_be_bytes(self.array()?))
            .map_err(|_| Violation("a length does not fit this machine".into()))
    }

    /// Inlined where it is read, so that the item's kind is matched on once.
    #[inline(always)]
    fn item(&mut self) -> Result<Item<'a>, Violation> {
        let marker = self.array::<1>()?[0];
        Ok(match Marker::from_u8(marker) {
            Marker::Null => Item::Nil,
            Marker::False => Item::Bool(false),
            Marker::True => Item::Bool(true),
            Marker::FixPos(v) => Item::Int(v.into()),
            Marker::FixNeg(v) => Item::Int(v.into()),
            Marker::U8 => Item::Int(u8::from_be_bytes(self.array()?).into()),
            Marker::U16 => Item::Int(u16::from_be_bytes(self.array()?).into()),
            Marker::U32 => Item::Int(u32::from_be_bytes(self.array()?).into()),
            Marker::U64 => Item::Uint(u64::from_be_bytes(self.array()?)),
            Marker::I8 => Item::Int(i8::from_be_bytes(self.array()?).into()),
            Marker::I16 => Item::Int(i16::from_be_bytes(self.array()?).into()),
            Marker::I32 => Item::Int(i32::from_be_bytes(self.array()?).into()),
            Marker::I64 => Item::Int(i64::from_be_bytes(self.array()?)),
            Marker::F32 => Item::F32(f32::from_be_bytes(self.array()?)),
            Marker::F64 => Item::F64(f64::from_be_bytes(self.array()?)),
            Marker::FixStr(n) => Item::Str(self.take(n.into())?),
            Marker::Str8 => Item::Str(self.sized(Self::len8)?),
            Marker::Str16 => Item::Str(self.sized(Self::len16)?),
            Marker::Str32 => Item::Str(self.sized(Self::len32)?),
            Marker::Bin8 => Item::Bin(self.sized(Self::len8)?),
            Marker::Bin16 => Item::Bin(self.sized(Self::len16)?),
            Marker::Bin32 => Item::Bin(self.sized(Self::len32)?),
            Marker::FixArray(n) => Item::Array(n.into()),
            Marker::Array16 => Item::Array(self.len16()?),
            Marker::Array32 => Item::Array(self.len32()?),
            Marker::FixMap(n) => Item::Map(n.into()),
            Marker::Map16 => Item::Map(self.len16()?),
            Marker::Map32 => Item::Map(self.len32()?),
            // Read whole (type byte and data), though no schema takes one.
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            Marker::Ext8 => self.len8().and_then(|n| self.ext(n))?,
            Marker::Ext16 => self.len16().and_then(|n| self.ext(n))?,
            Marker::Ext32 => self.len32().and_then(|n| self.ext(n))?,
            Marker::Reserved => {
                return Err(Violation(format!(
                    "byte {} is 0xc1, which MessagePack never uses",
                    self.pos - 1
                )));
            }
        })
    }

    /// Bytes whose length comes first, read by `len`.
    fn sized(
        &mut self,
        len: fn(&mut Self) -> Result<usize, Violation>,
    ) -> Result<&'a [u8], Violation> {
        let n = len(self)?;
        self.take(n)
    }

    /// An extension's type byte and `n` bytes of data, skipped.
    fn ext(&mut self, n: usize) -> Result<Item<'a>, Violation> {
        self.take(n.saturating_add(1))?;
        Ok(Item::Ext)
    }

    /// Text of up to 31 bytes (a fixstr, as most field names are), or `None`, with
    /// nothing read, for anything else.
    #[inline(always)]
    fn fixstr(&mut self) -> Option<&'a [u8]> {
        let &marker @ 0xa0..=0xbf = self.buf.get(self.pos)? else {
            return None;
        };
        let start = self.pos + 1;
        let text = self.buf.get(start..start + usize::from(marker & 0x1f))?;
        self.pos = start + text.len();
        Some(text)
    }

    /// A map key: text as sent (unchecked), or an integer or boolean as JSON writes it.
    fn key(&mut self) -> Result<Cow<'a, [u8]>, Violation> {
        // Most keys are field names of up to 31 bytes: a fixstr.
        if let Some(&marker @ 0xa0..=0xbf) = self.buf.get(self.pos) {
            self.pos += 1;
            return self.take(usize::from(marker & 0x1f)).map(Cow::Borrowed);
        }
        Ok(match self.item()? {
            Item::Str(bytes) => Cow::Borrowed(bytes),
            Item::Int(v) => Cow::Owned(v.to_string().into_bytes()),
            Item::Uint(v) => Cow::Owned(v.to_string().into_bytes()),
            Item::Bool(v) => Cow::Borrowed(if v { b"true" } else { b"false" }),
            other => {
                return Err(Violation(format!(
                    "a map key must be a string, found {}",
                    other.kind()
                )));
            }
        })
    }
}

impl Item<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Item::Nil => "null",
            Item::Bool(_) => "a boolean",
            Item::Int(_) | Item::Uint(_) => "an integer",
            Item::F32(_) | Item::F64(_) => "a number with a fraction",
            Item::Str(_) => "a string",
            Item::Bin(_) => "bytes",
            Item::Array(_) => "an array",
            Item::Map(_) => "an object",
            Item::Ext => "a MessagePack extension",
        }
    }
}

/// Reads one value and writes it as Avro.
struct Transcoder<'a> {
    reader: Reader<'a>,
    /// Containers open around the value being read.
    depth: usize,
}

impl<'a> Transcoder<'a> {
    fn value(&mut self, seed: Seed<'_>) -> Result<(), Violation> {
        let item = self.reader.item()?;
        if plain(seed.schema, seed.node, item, seed.out) {
            return Ok(());
        }
        match item {
            Item::Nil => seed.visit_unit(),
            Item::Bool(v) => seed.visit_bool(v),
            Item::Int(v) => seed.visit_i64(v),
            Item::Uint(v) => seed.visit_u64(v),
            Item::F32(v) => seed.visit_f32(v),
            Item::F64(v) => seed.visit_f64(v),
            Item::Str(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => seed.visit_str(text),
                // Not text, so perhaps bytes; if not those either, say why it is no text.
                Err(e) => seed
                    .visit_bytes::<Violation>(bytes)
                    .map_err(|_| Violation(format!("a string that is not UTF-8: {e}"))),
            },
            Item::Bin(bytes) => seed.visit_bytes(bytes),
            Item::Array(n) => self.nested(|t| t.array(seed, n)),
            Item::Map(n) => self.nested(|t| t.map(seed, n)),
            Item::Ext => Err(seed.mismatch("a MessagePack extension")),
        }
    }

    /// A container's contents, one level deeper.
    fn nested(
        &mut self,
        contents: impl FnOnce(&mut Self) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        // As rmp-serde and serde_json count: the limit'th container is one too many.
        if self.depth + 1 >= MAX_PACKED_DEPTH {
            return Err(Violation(format!(
                "depth limit exceeded: the value nests {MAX_PACKED_DEPTH} or more arrays and maps"
            )));
        }
        self.depth += 1;
        let result = contents(self);
        self.depth -= 1;
        result
    }

    fn array(&mut self, mut seed: Seed<'_>, n: usize) -> Result<(), Violation> {
        if let Some(b) = seed.branch::<Violation>("an array", |n| matches!(n, Node::Array(_)))? {
            seed = seed.into_branch(b);
        }
        let Node::Array(items) = *seed.node() else {
            return Err(seed.mismatch("an array"));
        };
        if n > 0 {
            write_long(seed.out, n as i64);
        }
        for i in 0..n {
            self.value(seed.child(items))
                .map_err(|e| Violation(format!("[{i}]: {e}")))?;
        }
        write_long(seed.out, 0);
        Ok(())
    }

    fn map(&mut self, mut seed: Seed<'_>, n: usize) -> Result<(), Violation> {
        if seed.object_branch() {
            // A union with no single composite branch: `{"<branch>": value}`.
            if n == 0 {
                return Err(seed.mismatch("an empty object"));
            }
            let key = self.reader.key()?;
            let branch = seed.wrapped_branch::<Violation>(&String::from_utf8_lossy(&key))?;
            self.value(seed.child(branch))?;
            if n > 1 {
                return Err(Violation(
                    "a wrapped union value must have exactly one key".into(),
                ));
            }
            return Ok(());
        }
        let schema = seed.schema;
        match schema.nodes[seed.node] {
            Node::Map(values) => {
                if n > 0 {
                    write_long(seed.out, n as i64);
                }
                for _ in 0..n {
                    let key = self.reader.key()?;
                    let key = std::str::from_utf8(&key)
                        .map_err(|e| Violation(format!("a map key that is not UTF-8: {e}")))?;
                    write_bytes(seed.out, key.as_bytes());
                    self.value(seed.child(values))
                        .map_err(|e| Violation(format!("[{key:?}]: {e}")))?;
                }
                write_long(seed.out, 0);
                Ok(())
            }
            Node::Record { ref fields, .. } => {
                if n == fields.len() && self.in_order(schema, fields, seed.out) {
                    return Ok(());
                }
                encode_record(
                    schema,
                    seed.node,
                    seed.out,
                    seed.bound,
                    Entries {
                        transcoder: self,
                        left: n,
                    },
                )
            }
            _ => Err(seed.mismatch("an object")),
        }
    }

    /// A record whose every field came, in schema order, as a plain scalar: the usual
    /// record (serde writes a struct's fields in declaration order), written straight, with
    /// none of [`encode_record`]'s bookkeeping of order, repeats and defaults. `false`, with
    /// the reader and `out` as they were, leaves the record to `encode_record`, which then
    /// decides and words everything as it always does. Nothing else is touched on the way
    /// (a scalar takes no default from the bound), so going back is exact.
    fn in_order(&mut self, schema: &AvroSchema, fields: &[Field], out: &mut Vec<u8>) -> bool {
        let (pos, len) = (self.reader.pos, out.len());
        for f in fields {
            let written = self.reader.fixstr() == Some(f.name.as_bytes())
                && self
                    .reader
                    .item()
                    .is_ok_and(|item| plain(schema, f.node, item, out));
            if !written {
                self.reader.pos = pos;
                out.truncate(len);
                return false;
            }
        }
        true
    }
}

/// The kinds of MessagePack scalar whose Avro a node decides by kind alone: their places in
/// a [`Plans`] row.
const NIL: usize = 0;
const BOOL: usize = 1;
/// An integer that fits an Avro int (32 bits).
const INT32: usize = 2;
/// An integer that does not.
const INT64: usize = 3;
/// A finite double.
const DOUBLE: usize = 4;
/// Text that is UTF-8.
const TEXT: usize = 5;
const KINDS: usize = 6;
/// One of each kind, in its place, for deciding a node's [`Plans`]: the decisions depend on
/// the kind only (and, for an integer, on its fitting 32 bits).
const SAMPLES: [Item<'static>; KINDS] = {
    let mut samples = [Item::Nil; KINDS];
    samples[BOOL] = Item::Bool(false);
    samples[INT32] = Item::Int(0);
    samples[INT64] = Item::Int(i64::MAX);
    samples[DOUBLE] = Item::F64(0.5);
    samples[TEXT] = Item::Str(b"");
    samples
};

/// How a node writes a scalar of each kind: what [`Seed`] would write, decided once when
/// the schema is compiled instead of for every value.
pub(super) type Plans = [Plain; KINDS];

/// How a node writes a scalar of one kind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plain {
    /// The union branch whose index is written first (the node is a union).
    branch: Option<u32>,
    write: As,
}

/// The Avro a scalar is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum As {
    /// Left to the seed, which decides every other case and words every refusal.
    Seed,
    Nothing,
    Byte,
    Long,
    Float,
    Double,
    Text,
}

/// The plans of every node of a compiled schema.
pub(super) fn plans(nodes: &[Node]) -> Vec<Plans> {
    (0..nodes.len())
        .map(|node| SAMPLES.map(|item| decide(nodes, node, item)))
        .collect()
}

/// What `node` does with a scalar of `item`'s kind: the item's own kind, or, in a union,
/// the first branch that takes it, as [`Seed`] chooses it.
fn decide(nodes: &[Node], node: usize, item: Item<'_>) -> Plain {
    let seed = Plain {
        branch: None,
        write: As::Seed,
    };
    let mut target = &nodes[node];
    let mut branch = None;
    if let Node::Union(branches) = target {
        for (i, &b) in branches.iter().enumerate() {
            match takes(&nodes[b], item) {
                Some(true) => {
                    let Ok(i) = u32::try_from(i) else {
                        return seed;
                    };
                    branch = Some(i);
                    target = &nodes[b];
                    break;
                }
                Some(false) => {}
                None => return seed,
            }
        }
        if branch.is_none() {
            return seed;
        }
    }
    Plain {
        branch,
        write: written_as(target, item),
    }
}

/// Whether the seed takes `item` into union branch `node`; `None` where that depends on
/// more than the kinds (an enum's symbols, a fixed's size, text as bytes).
fn takes(node: &Node, item: Item<'_>) -> Option<bool> {
    Some(match item {
        Item::Nil => matches!(node, Node::Null),
        Item::Bool(_) => matches!(node, Node::Boolean),
        Item::Int(v) => match node {
            Node::Int => i32::try_from(v).is_ok(),
            Node::Long | Node::Float | Node::Double => true,
            _ => false,
        },
        Item::F64(_) => matches!(node, Node::Float | Node::Double),
        Item::Str(_) => match node {
            Node::String => true,
            Node::Bytes | Node::Enum { .. } | Node::Fixed { .. } => return None,
            _ => false,
        },
        _ => return None,
    })
}

/// The Avro of `item` as `node` (not a union), where it is plain.
fn written_as(node: &Node, item: Item<'_>) -> As {
    match (item, node) {
        (Item::Nil, Node::Null) => As::Nothing,
        (Item::Bool(_), Node::Boolean) => As::Byte,
        (Item::Int(_), Node::Long) => As::Long,
        (Item::Int(v), Node::Int) if i32::try_from(v).is_ok() => As::Long,
        (Item::Int(_), Node::Float) => As::Float,
        (Item::Int(_), Node::Double) => As::Double,
        (Item::F64(_), Node::Double) => As::Double,
        (Item::Str(_), Node::String) => As::Text,
        _ => As::Seed,
    }
}

/// Write a scalar whose Avro is plain, by its node's plan. `false`, with nothing written,
/// leaves the item to the seed; the bytes are the same either way
/// (`the_direct_reader_agrees_*`). Most record fields are such scalars, and the seed's
/// general path cost several times this one per field.
fn plain(schema: &AvroSchema, node: usize, item: Item<'_>, out: &mut Vec<u8>) -> bool {
    let (kind, item) = match item {
        Item::Nil => (NIL, item),
        Item::Bool(_) => (BOOL, item),
        Item::Int(v) => (int_kind(v), item),
        Item::Uint(v) => match i64::try_from(v) {
            Ok(v) => (int_kind(v), Item::Int(v)),
            Err(_) => return false,
        },
        Item::F64(v) if v.is_finite() => (DOUBLE, item),
        // Short text is mostly ASCII, checked for far less than a UTF-8 validation costs.
        Item::Str(bytes) if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() => (TEXT, item),
        _ => return false,
    };
    let plan = schema.plans[node][kind];
    let scalar = match (plan.write, item) {
        (As::Nothing, Item::Nil) => Scalar::Nothing,
        (As::Byte, Item::Bool(v)) => Scalar::Byte(u8::from(v)),
        (As::Long, Item::Int(v)) => Scalar::Long(v),
        (As::Float, Item::Int(v)) => Scalar::Float(v as f32),
        (As::Double, Item::Int(v)) => Scalar::Double(v as f64),
        (As::Double, Item::F64(v)) => Scalar::Double(v),
        (As::Text, Item::Str(bytes)) => Scalar::Text(bytes),
        // `As::Seed`: the plans pair no other kind of write with an item.
        _ => return false,
    };
    if let Some(b) = plan.branch {
        write_long(out, b.into());
    }
    match scalar {
        Scalar::Nothing => {}
        Scalar::Byte(b) => out.push(b),
        Scalar::Long(v) => write_long(out, v),
        Scalar::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
        Scalar::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
        Scalar::Text(bytes) => write_bytes(out, bytes),
    }
    true
}

/// A scalar's Avro, as its plan writes it.
enum Scalar<'a> {
    Nothing,
    Byte(u8),
    Long(i64),
    Float(f32),
    Double(f64),
    Text(&'a [u8]),
}

/// An integer's kind: whether it fits an Avro int.
fn int_kind(v: i64) -> usize {
    if i32::try_from(v).is_ok() {
        INT32
    } else {
        INT64
    }
}

/// A MessagePack map's entries as a record's fields.
struct Entries<'t, 'a> {
    transcoder: &'t mut Transcoder<'a>,
    left: usize,
}

impl<'a> Fields for Entries<'_, 'a> {
    type Name = Cow<'a, [u8]>;
    type Error = Violation;

    fn next_name(&mut self) -> Result<Option<Self::Name>, Violation> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.transcoder.reader.key().map(Some)
    }

    fn next_value(&mut self, seed: Seed<'_>) -> Result<(), Violation> {
        self.transcoder.value(seed)
    }
}

impl AvroSchema {
    /// The body of [`AvroSchema::encode_packed`]: `out` is truncated by the caller on error.
    pub(super) fn transcode_packed(
        &self,
        packed: &[u8],
        bound: &Bound,
        out: &mut Vec<u8>,
    ) -> Result<(), Violation> {
        let mut t = Transcoder {
            reader: Reader {
                buf: packed,
                pos: 0,
            },
            depth: 0,
        };
        t.value(Seed {
            schema: self,
            node: self.root,
            out,
            bound,
        })?;
        if t.reader.pos != packed.len() {
            return Err(Violation(format!(
                "bytes left over after the value: {} of {}",
                packed.len() - t.reader.pos,
                packed.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::EncodeError;
    use super::*;

    /// A record of every scalar kind a plan writes, in and out of unions.
    const FLAT: &str = r#"{"type":"record","name":"F","fields":[
        {"name":"s","type":"string"},
        {"name":"l","type":"long"},
        {"name":"i","type":"int"},
        {"name":"d","type":"double"},
        {"name":"f","type":"float"},
        {"name":"b","type":"boolean"},
        {"name":"n","type":"null"},
        {"name":"u","type":["null","double"]},
        {"name":"v","type":["string","null"]},
        {"name":"w","type":["null","int","long"]}
    ]}"#;

    /// A field's name as sent and its value's MessagePack.
    type Entry = (&'static [u8], Vec<u8>);

    fn mp<E: std::fmt::Debug>(write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        out
    }

    /// FLAT's fields in schema order, each a plain value; and the same value as JSON.
    fn entries() -> (Vec<Entry>, &'static str) {
        use rmp::encode::*;
        let entries = vec![
            (&b"s"[..], mp(|o| write_str(o, "d-1"))),
            (b"l", mp(|o| write_sint(o, -(1 << 40)).map(drop))),
            (b"i", mp(|o| write_sint(o, -3).map(drop))),
            (b"d", mp(|o| write_f64(o, 21.5))),
            (b"f", mp(|o| write_u64(o, 7))),
            (b"b", mp(|o| write_bool(o, true))),
            (b"n", mp(write_nil)),
            (b"u", mp(|o| write_f64(o, 20.25))),
            (b"v", mp(|o| write_str(o, "x"))),
            (b"w", mp(|o| write_uint(o, 1 << 40).map(drop))),
        ];
        let json = r#"{"s":"d-1","l":-1099511627776,"i":-3,"d":21.5,"f":7,"b":true,"n":null,"u":20.25,"v":"x","w":1099511627776}"#;
        (entries, json)
    }

    /// A MessagePack map of `entries`, in the order given; each name a fixstr, or a str8
    /// where `str8` says so.
    fn map(entries: &[Entry], str8: bool) -> Vec<u8> {
        let mut out = mp(|o| rmp::encode::write_map_len(o, entries.len() as u32).map(drop));
        for (name, value) in entries {
            if str8 {
                out.push(0xd9);
                out.push(name.len() as u8);
            } else {
                out.push(0xa0 | name.len() as u8);
            }
            out.extend_from_slice(name);
            out.extend_from_slice(value);
        }
        out
    }

    /// `in_order` on the record in `packed` (after its map marker), into an `out` that
    /// already holds a byte; what it returned, the reader's position and `out`.
    fn straight_of(s: &AvroSchema, packed: &[u8]) -> (bool, usize, Vec<u8>) {
        let Node::Record { fields, .. } = &s.nodes[s.root] else {
            unreachable!("FLAT is a record")
        };
        let mut t = Transcoder {
            reader: Reader {
                buf: packed,
                pos: 1,
            },
            depth: 0,
        };
        let mut out = vec![7];
        let wrote = t.in_order(s, fields, &mut out);
        (wrote, t.reader.pos, out)
    }

    fn encoded(s: &AvroSchema, packed: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        s.encode_packed(packed, usize::MAX, &mut out).map(|()| out)
    }

    #[test]
    fn a_record_in_schema_order_is_written_straight_as_any_order_writes_it() {
        let s = AvroSchema::parse(FLAT).unwrap();
        let (entries, json) = entries();
        let packed = map(&entries, false);
        let (wrote, pos, out) = straight_of(&s, &packed);
        assert!(wrote);
        assert_eq!(pos, packed.len());
        let mut from_json = vec![7];
        s.encode_json(json, usize::MAX, &mut from_json).unwrap();
        assert_eq!(out, from_json);
        // The general path, which a record in another order takes, writes the same.
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(encoded(&s, &map(&reversed, false)).unwrap(), out[1..]);
        assert_eq!(encoded(&s, &packed).unwrap(), out[1..]);
    }

    #[test]
    fn plans_write_what_the_seed_writes_from_json() {
        use rmp::encode::*;
        let types = [
            r#""int""#,
            r#""long""#,
            r#""float""#,
            r#""double""#,
            r#""string""#,
            r#""boolean""#,
            r#""null""#,
            r#"["null","int"]"#,
            r#"["float","double"]"#,
            r#"["bytes","string"]"#,
            r#"[{"type":"enum","name":"E","symbols":["x"]},"string"]"#,
            r#"["null","int","long"]"#,
            r#"["string","null"]"#,
            r#"["long","double"]"#,
            r#"["double","long"]"#,
        ];
        let big = i64::from(i32::MAX) + 1;
        // Each value as MessagePack and as JSON.
        let values: Vec<(Vec<u8>, String)> = vec![
            (
                mp(|o| write_sint(o, i32::MIN.into()).map(drop)),
                i32::MIN.to_string(),
            ),
            (
                mp(|o| write_sint(o, i32::MAX.into()).map(drop)),
                i32::MAX.to_string(),
            ),
            (mp(|o| write_sint(o, big).map(drop)), big.to_string()),
            (
                mp(|o| write_sint(o, i64::from(i32::MIN) - 1).map(drop)),
                (i64::from(i32::MIN) - 1).to_string(),
            ),
            (
                mp(|o| write_sint(o, i64::MAX).map(drop)),
                i64::MAX.to_string(),
            ),
            (mp(|o| write_u64(o, 7)), "7".into()),
            (mp(|o| write_u64(o, u64::MAX)), u64::MAX.to_string()),
            (mp(|o| write_f64(o, 0.5)), "0.5".into()),
            (mp(|o| write_f64(o, 1e300)), "1e300".into()),
            (mp(|o| write_str(o, "x")), r#""x""#.into()),
            (mp(|o| write_str(o, "é")), r#""é""#.into()),
            (mp(write_nil), "null".into()),
            (mp(|o| write_bool(o, true)), "true".into()),
        ];
        let mut straight = 0;
        for ty in types {
            let s = AvroSchema::parse(&format!(
                r#"{{"type":"record","name":"R","fields":[{{"name":"a","type":{ty}}}]}}"#
            ))
            .unwrap();
            for (value, json) in &values {
                let packed = map(&[(b"a", value.clone())], false);
                let mut from_json = Vec::new();
                let json_verdict = s
                    .encode_json(&format!(r#"{{"a":{json}}}"#), usize::MAX, &mut from_json)
                    .map(|()| from_json);
                assert_eq!(
                    encoded(&s, &packed).ok(),
                    json_verdict.ok(),
                    "{json} as {ty}"
                );
                straight += usize::from(straight_of(&s, &packed).0);
            }
        }
        // Most of the accepted cases went the straight way.
        assert_eq!(
            straight, 63,
            "the cases of a plain kind that the field takes plainly"
        );
    }

    #[test]
    fn a_record_it_cannot_write_straight_is_left_whole_to_the_general_path() {
        use rmp::encode::*;
        let s = AvroSchema::parse(FLAT).unwrap();
        let (entries, base_json) = entries();
        let with = |field: usize, value: Vec<u8>| {
            let mut e = entries.clone();
            e[field].1 = value;
            e
        };
        let not_utf8 = {
            let mut v = mp(|o| write_str_len(o, 2).map(drop));
            v.extend_from_slice(&[0xc3, 0x28]);
            v
        };
        let last = entries.len() - 1;
        let mut renamed = entries.clone();
        renamed[3].0 = b"x";
        let mut repeated = entries.clone();
        repeated[last].0 = b"v";
        let mut cut = map(&entries, false);
        cut.truncate(cut.len() - 3);
        let json = |from: &str, to: &str| base_json.replace(from, to);
        // Accepted by the general path, with the Avro of this JSON.
        let accepted: Vec<(&str, Vec<u8>, String)> = vec![
            (
                "an f32 for a double",
                map(&with(3, mp(|o| write_f32(o, 0.1))), false),
                json(r#""d":21.5"#, r#""d":0.1"#),
            ),
            ("names as str8", map(&entries, true), json("", "")),
            (
                "the last value a NaN, taken as null",
                map(&with(last, mp(|o| write_f64(o, f64::NAN))), false),
                json(r#""w":1099511627776"#, r#""w":null"#),
            ),
        ];
        // Refused by it.
        let refused: Vec<(&str, Vec<u8>)> = vec![
            (
                "an int out of range",
                map(&with(2, mp(|o| write_sint(o, 1 << 40).map(drop))), false),
            ),
            ("text that is not UTF-8", map(&with(0, not_utf8), false)),
            ("an unknown name", map(&renamed, false)),
            ("a repeated name", map(&repeated, false)),
            (
                "a NaN for a double",
                map(&with(3, mp(|o| write_f64(o, f64::NAN))), false),
            ),
            (
                "a string for a long",
                map(&with(1, mp(|o| write_str(o, "1"))), false),
            ),
            ("cut short", cut),
        ];
        let cases = accepted
            .iter()
            .map(|(what, packed, _)| (*what, packed))
            .chain(refused.iter().map(|(what, packed)| (*what, packed)));
        for (what, packed) in cases {
            let (wrote, pos, out) = straight_of(&s, packed);
            assert!(!wrote, "{what}");
            assert_eq!(
                (pos, out),
                (1, vec![7]),
                "{what}: the reader and output are as they were"
            );
        }
        for (what, packed, json) in &accepted {
            let mut from_json = Vec::new();
            s.encode_json(json, usize::MAX, &mut from_json).unwrap();
            assert_eq!(encoded(&s, packed).unwrap(), from_json, "{what}");
        }
        for (what, packed) in &refused {
            assert!(encoded(&s, packed).is_err(), "{what}");
        }
    }
}
