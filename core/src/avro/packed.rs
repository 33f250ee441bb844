//! MessagePack to Avro, read straight off the bytes with the schema in hand.
//!
//! The same [`Seed`] that takes JSON's values takes each scalar here, so a value gives the
//! same Avro bytes and the same verdict either way; only the reading differs. A container's
//! length comes first in MessagePack, so an array's or a map's block count is written before
//! its items with nothing buffered, and a record's field names are compared as bytes (a
//! name that equals a field's is that field, UTF-8 by construction). A string that is not
//! UTF-8 is taken as bytes, as `rmp-serde` takes it, and is refused where text is due.

use super::{AvroSchema, Bound, Fields, MAX_PACKED_DEPTH, Node, Seed, Violation, encode_record};
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
        match *seed.node() {
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
            Node::Record { .. } => encode_record(
                seed.schema,
                seed.node,
                seed.out,
                seed.bound,
                Entries {
                    transcoder: self,
                    left: n,
                },
            ),
            _ => Err(seed.mismatch("an object")),
        }
    }
}

/// A scalar's Avro, decided without the seed.
enum Scalar<'a> {
    Nothing,
    Byte(u8),
    Long(i64),
    Float(f32),
    Double(f64),
    Text(&'a [u8]),
}

/// Write a scalar whose Avro is plain: the item is of its node's own kind, or the node is a
/// union and the branch is the first that takes the item, as [`Seed`] chooses it. `false`,
/// with nothing written, leaves the item to the seed, which decides every other case and
/// words every refusal; the bytes are the same either way (`the_direct_reader_agrees_*`).
/// Most record fields are such scalars, and the seed's general path cost several times
/// this one per field.
fn plain(schema: &AvroSchema, node: usize, item: Item<'_>, out: &mut Vec<u8>) -> bool {
    let item = match item {
        Item::Uint(v) => match i64::try_from(v) {
            Ok(v) => Item::Int(v),
            Err(_) => return false,
        },
        // Short text is mostly ASCII, checked for far less than a UTF-8 validation costs.
        Item::Str(bytes) if !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() => {
            return false;
        }
        Item::F64(v) if !v.is_finite() => return false,
        other => other,
    };
    let mut node = &schema.nodes[node];
    let mut branch = None;
    if let Node::Union(branches) = node {
        for (i, &b) in branches.iter().enumerate() {
            match takes(&schema.nodes[b], item) {
                Some(true) => {
                    branch = Some(i);
                    node = &schema.nodes[b];
                    break;
                }
                Some(false) => {}
                None => return false,
            }
        }
        if branch.is_none() {
            return false;
        }
    }
    let Some(scalar) = scalar(node, item) else {
        return false;
    };
    if let Some(i) = branch {
        write_long(out, i as i64);
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
fn scalar<'a>(node: &Node, item: Item<'a>) -> Option<Scalar<'a>> {
    Some(match (item, node) {
        (Item::Nil, Node::Null) => Scalar::Nothing,
        (Item::Bool(v), Node::Boolean) => Scalar::Byte(u8::from(v)),
        (Item::Int(v), Node::Long) => Scalar::Long(v),
        (Item::Int(v), Node::Int) if i32::try_from(v).is_ok() => Scalar::Long(v),
        (Item::Int(v), Node::Float) => Scalar::Float(v as f32),
        (Item::Int(v), Node::Double) => Scalar::Double(v as f64),
        (Item::F64(v), Node::Double) => Scalar::Double(v),
        (Item::Str(bytes), Node::String) => Scalar::Text(bytes),
        _ => return None,
    })
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
