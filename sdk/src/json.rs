//! The fast path of [`Message::json`](crate::Message::json).
//!
//! serde_json's reader is general: escapes, numbers of any size, numeric map keys, raw
//! values, errors that name their line and column. A device's payload needs little of it,
//! and in the sandbox parsing was most of a plugin's work per message. This reader drives
//! the same `Deserialize` impls over the common case only: strings without escapes,
//! numbers that convert exactly, nesting to a modest depth. Whatever it is not sure of —
//! bad syntax, an escape, a long number, a value of the wrong shape for the target, a
//! target it does not serve — it leaves to serde_json, which reads the whole payload again
//! and gives its own value or its own error. So a payload yields what serde_json yields,
//! rejections keep serde_json's text, and only the common case is faster.
//!
//! Any error made during the read hands the payload to serde_json, even one a
//! `Deserialize` impl catches and goes on from, and so does an impl looking at an error's
//! text. A `Deserialize` impl may therefore run twice on one payload, the first time cut
//! short; one with side effects (counting, logging) sees both, and one that asks for its
//! deserializer's type name gets this reader's the first time. On a payload that is not
//! UTF-8 it may run once, cut short at the first bad byte, before the payload is refused
//! as it always was (the text is checked as it is read, not before: see [`from_slice`]).
//!
//! No crate offers that guarantee (faster readers parse numbers and word errors their own
//! way), which is why this one is written here.
//!
//! Where it answers, it answers as serde_json does, call for call: the same `visit_*` for
//! each token (`visit_borrowed_str` for strings; `visit_u64`, `visit_i64` or `visit_f64` for
//! numbers as serde_json classifies them), the same shapes accepted for each
//! `deserialize_*`, and floats only where the conversion is one exact operation
//! (significand ≤ 2⁵³, power of ten ≤ 10²²), where every correct reader agrees to the bit.

use serde::de::{self, DeserializeSeed, Visitor};
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The fast path's only error: "not sure, ask serde_json". It carries nothing because the
/// error reported is serde_json's.
pub(crate) struct Unsure;

/// How many times a `Deserialize` impl has looked at one of the fast path's errors (kept
/// its text, say, having caught it), in any thread. A read during which it changed is
/// serde_json's, whose error would have read differently; a look from another thread only
/// costs the read its fast path.
static SHOWN: AtomicUsize = AtomicUsize::new(0);

impl fmt::Display for Unsure {
    #[cold]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SHOWN.fetch_add(1, Ordering::Relaxed);
        f.write_str("left to serde_json")
    }
}

impl fmt::Debug for Unsure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Unsure {}

impl de::Error for Unsure {
    /// A visitor's error. One about a scalar leaves both readers past the scalar, so it is
    /// not noted; one inside an array or object is noted where the container is read.
    fn custom<T: fmt::Display>(_: T) -> Self {
        Unsure
    }
}

type Result<T> = std::result::Result<T, Unsure>;

/// Nesting the fast path follows; deeper documents go to serde_json (whose limit is 128).
const MAX_DEPTH: u32 = 64;

/// The name serde_json's `RawValue` asks for; its bytes are serde_json's business.
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `bytes` read into `T` as serde_json would read them, or `None` when serde_json must
/// decide.
///
/// The bytes need not be known to be UTF-8: every byte outside a string is one of JSON's
/// ASCII tokens or whitespace, and each string is checked as it is read (a scan that finds
/// its end notes any byte with the high bit set, and only such a string is checked as
/// UTF-8). A read that answers has therefore checked the whole payload, and a payload that
/// is not UTF-8 is left to the caller, which words that error as before. That spares the
/// usual payload a pass over all its bytes before the read.
pub(crate) fn from_slice<'a, T: de::Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    if !plain_numbers() {
        return None;
    }
    let mut reader = Reader {
        bytes,
        pos: 0,
        depth: 0,
        failed: false,
    };
    let shown = SHOWN.load(Ordering::Relaxed);
    let value = T::deserialize(&mut reader).ok()?;
    if reader.failed || reader.ws().is_some() || SHOWN.load(Ordering::Relaxed) != shown {
        return None;
    }
    Some(value)
}

/// Whether serde_json hands numbers to visitors as numbers. Its `arbitrary_precision`
/// feature (which any crate in a plugin's build can turn on) hands them over as a map
/// holding their text instead; then the fast path stands aside.
fn plain_numbers() -> bool {
    static PLAIN: OnceLock<bool> = OnceLock::new();
    *PLAIN.get_or_init(|| {
        struct Probe;
        impl Visitor<'_> for Probe {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<f64, E> {
                Ok(v)
            }
        }
        struct Probed(f64);
        impl<'de> de::Deserialize<'de> for Probed {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                d.deserialize_any(Probe).map(Probed)
            }
        }
        serde_json::from_str::<Probed>("1.5").is_ok_and(|n| n.0 == 1.5)
    })
}

/// A number as serde_json classifies it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Number {
    fn visit<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Number::U64(n) => visitor.visit_u64(n),
            Number::I64(n) => visitor.visit_i64(n),
            Number::F64(n) => visitor.visit_f64(n),
        }
    }
}

struct Reader<'a> {
    /// The payload; see [`from_slice`] for why bytes, not text.
    bytes: &'a [u8],
    pos: usize,
    depth: u32,
    /// Whether the read has given up somewhere, even if a `Deserialize` impl caught that
    /// and went on: serde_json may have read further before failing (to the end of an
    /// array or object, or a number it takes and this does not), so the two would part.
    failed: bool,
}

impl<'a> Reader<'a> {
    /// The fast path's error, noted.
    #[cold]
    #[inline(never)]
    fn unsure(&mut self) -> Unsure {
        self.failed = true;
        Unsure
    }

    /// Skips JSON whitespace; the next byte, if any.
    #[inline(always)]
    fn ws(&mut self) -> Option<u8> {
        // Every whitespace byte is at most a space: most tokens follow one another
        // directly, and then no loop runs (in the sandbox each loop pays an interruption
        // check).
        match self.bytes.get(self.pos) {
            Some(&b) if b > b' ' => Some(b),
            _ => self.skip_ws(),
        }
    }

    #[cold]
    #[inline(never)]
    fn skip_ws(&mut self) -> Option<u8> {
        let bytes = self.bytes;
        // Runs of spaces (indentation, padding) eight at a time.
        while bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<8>) == Some(b"        ") {
            self.pos += 8;
        }
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b' ' | b'\n' | b'\r' | b'\t' => self.pos += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// The byte at the cursor.
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        match self.bytes.get(self.pos..self.pos + word.len()) {
            Some(w) if w == word => {
                self.pos += word.len();
                Ok(())
            }
            _ => Err(self.unsure()),
        }
    }

    /// The string whose opening quote is at the cursor, borrowed: one without escapes or
    /// control characters, and UTF-8.
    #[inline(always)]
    #[allow(unsafe_code)] // ASCII taken as text without a UTF-8 check's set-up: see SAFETY.
    fn string(&mut self) -> Result<&'a str> {
        const ONES: u64 = u64::MAX / 255;
        let bytes = self.bytes;
        let start = self.pos + 1;
        let mut i = start;
        let mut ascii = true;
        loop {
            // Eight bytes at a time while eight remain: the lowest byte flagged is the first
            // quote, backslash, control character or non-ASCII byte (flags above it may be
            // false).
            while let Some(chunk) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) {
                let word = u64::from_le_bytes(*chunk);
                let quote = word ^ (ONES * u64::from(b'"'));
                let backslash = word ^ (ONES * u64::from(b'\\'));
                let flags = (quote.wrapping_sub(ONES) & !quote)
                    | (backslash.wrapping_sub(ONES) & !backslash)
                    | (word.wrapping_sub(ONES * 0x20) & !word)
                    | word;
                let flags = flags & (ONES << 7);
                if flags != 0 {
                    i += (flags.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match bytes.get(i) {
                Some(b'"') => break,
                Some(&b) if b >= 0x80 => {
                    ascii = false;
                    i += 1;
                }
                Some(&b) if b != b'\\' && b >= 0x20 => i += 1,
                _ => return Err(self.unsure()),
            }
        }
        self.pos = i + 1;
        let inside = bytes.get(start..i).ok_or_else(|| self.unsure())?;
        if ascii {
            // SAFETY: every byte of `inside` was seen above with its high bit clear: ASCII,
            // which is UTF-8.
            Ok(unsafe { std::str::from_utf8_unchecked(inside) })
        } else {
            std::str::from_utf8(inside).map_err(|_| self.unsure())
        }
    }

    /// The number at the cursor, as serde_json reads it, when it is one the fast path can
    /// read to the same bits.
    #[inline(always)]
    fn number(&mut self) -> Result<Number> {
        let bytes = self.bytes;
        let digit = |i: usize| match bytes.get(i) {
            Some(&d @ b'0'..=b'9') => Some(u64::from(d - b'0')),
            _ => None,
        };
        let mut i = self.pos;
        let positive = bytes.get(i) != Some(&b'-');
        if !positive {
            i += 1;
        }
        // At most 19 digits are read (they always fit a u64): longer numbers go to serde_json.
        let mut significand: u64 = 0;
        let mut digits: usize = 0;
        match digit(i) {
            Some(0) => {
                i += 1;
                if digit(i).is_some() {
                    return Err(self.unsure());
                }
            }
            Some(_) => {
                while let Some(d) = digit(i) {
                    significand = significand.wrapping_mul(10).wrapping_add(d);
                    digits += 1;
                    i += 1;
                }
            }
            None => return Err(self.unsure()),
        }
        let mut float = false;
        let mut fraction: usize = 0;
        if bytes.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            let first = i;
            while let Some(d) = digit(i) {
                significand = significand.wrapping_mul(10).wrapping_add(d);
                i += 1;
            }
            fraction = i - first;
            if fraction == 0 {
                return Err(self.unsure());
            }
            digits += fraction;
        }
        let mut exponent: i32 = 0;
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            float = true;
            i += 1;
            let negative = match bytes.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let first = i;
            let mut e: i32 = 0;
            while let Some(d) = digit(i) {
                if i - first == 4 {
                    return Err(self.unsure());
                }
                e = e * 10 + d as i32;
                i += 1;
            }
            if i == first {
                return Err(self.unsure());
            }
            exponent = if negative { -e } else { e };
        }
        if digits > 19 {
            return Err(self.unsure());
        }
        // At most 19 fraction digits and 9999 in the exponent: no overflow.
        let exponent = exponent - fraction as i32;
        self.pos = i;
        if !float {
            if positive {
                return Ok(Number::U64(significand));
            }
            // serde_json's rule: `-0` and what does not fit an i64 become floats.
            let negated = significand.cast_signed().wrapping_neg();
            return Ok(if negated >= 0 {
                Number::F64(-(significand as f64))
            } else {
                Number::I64(negated)
            });
        }
        let power = POW10
            .get(exponent.unsigned_abs() as usize)
            .ok_or_else(|| self.unsure())?;
        if significand > 1 << 53 {
            return Err(self.unsure());
        }
        let magnitude = if exponent >= 0 {
            significand as f64 * power
        } else {
            significand as f64 / power
        };
        Ok(Number::F64(if positive { magnitude } else { -magnitude }))
    }

    fn deserialize_number<'de, V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'-' | b'0'..=b'9') => self.number()?.visit(visitor),
            _ => Err(self.unsure()),
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth == MAX_DEPTH {
            return Err(self.unsure());
        }
        self.depth += 1;
        self.pos += 1;
        let value = f(self);
        self.depth -= 1;
        if value.is_err() {
            self.failed = true;
        }
        value
    }

    /// The array at the cursor, given to `visitor`, which must take all of it.
    fn seq<V: Visitor<'a>>(&mut self, visitor: V) -> Result<V::Value> {
        self.nested(|r| {
            let value = visitor.visit_seq(Elements {
                reader: &mut *r,
                first: true,
            })?;
            r.close(b']')?;
            Ok(value)
        })
    }

    /// The object at the cursor, given to `visitor`, which must take all of it.
    fn map<V: Visitor<'a>>(&mut self, visitor: V) -> Result<V::Value> {
        self.nested(|r| {
            let value = visitor.visit_map(Entries {
                reader: &mut *r,
                first: true,
            })?;
            r.close(b'}')?;
            Ok(value)
        })
    }

    #[inline(always)]
    fn close(&mut self, end: u8) -> Result<()> {
        if self.ws() == Some(end) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unsure())
        }
    }

    /// Before an element (`end` is `]`) or entry (`}`): whether there is one, past its comma
    /// and the whitespace before it.
    #[inline(always)]
    fn more(&mut self, first: &mut bool, end: u8) -> Result<bool> {
        match self.ws() {
            Some(b) if b == end => return Ok(false),
            Some(b',') if !*first => {
                self.pos += 1;
                match self.ws() {
                    Some(b) if b != end => {}
                    _ => return Err(self.unsure()),
                }
            }
            Some(_) if *first => {}
            _ => return Err(self.unsure()),
        }
        *first = false;
        Ok(true)
    }

    #[inline(always)]
    fn colon(&mut self) -> Result<()> {
        self.close(b':')
    }

    /// Passes over a value nobody reads, checking it as serde_json would.
    #[inline(always)]
    fn skip(&mut self) -> Result<()> {
        match self.ws().ok_or_else(|| self.unsure())? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => self.skip_other(),
        }
    }

    /// [`Reader::skip`] for literals, arrays and objects.
    #[inline(never)]
    fn skip_other(&mut self) -> Result<()> {
        match self.ws().ok_or_else(|| self.unsure())? {
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'[' => self.nested(|r| {
                let mut first = true;
                while r.more(&mut first, b']')? {
                    r.skip()?;
                }
                r.close(b']')
            }),
            b'{' => self.nested(|r| {
                let mut first = true;
                while r.more(&mut first, b'}')? {
                    if r.peek() != Some(b'"') {
                        return Err(r.unsure());
                    }
                    r.string()?;
                    r.colon()?;
                    r.skip()?;
                }
                r.close(b'}')
            }),
            _ => Err(self.unsure()),
        }
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.deserialize_number(visitor)
        })*
    };
}

macro_rules! unsure {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
            Err(self.unsure())
        })*
    };
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Unsure;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws().ok_or_else(|| self.unsure())? {
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'-' | b'0'..=b'9' => self.number()?.visit(visitor),
            b'"' => visitor.visit_borrowed_str(self.string()?),
            b'[' => self.seq(visitor),
            b'{' => self.map(visitor),
            _ => Err(self.unsure()),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b't') => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            Some(b'f') => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            _ => Err(self.unsure()),
        }
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f64
    }

    // f32 (read at single precision under `float_roundtrip`), 128-bit integers and bytes
    // are read by serde_json its own way.
    unsure! { deserialize_f32 deserialize_i128 deserialize_u128 deserialize_bytes deserialize_byte_buf }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'"') => visitor.visit_borrowed_str(self.string()?),
            _ => Err(self.unsure()),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'n') => {
                self.literal(b"null")?;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'n') => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            _ => Err(self.unsure()),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name == RAW_VALUE {
            return Err(self.unsure());
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'[') => self.seq(visitor),
            _ => Err(self.unsure()),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'{') => self.map(visitor),
            _ => Err(self.unsure()),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.ws() {
            Some(b'[') => self.seq(visitor),
            Some(b'{') => self.map(visitor),
            _ => Err(self.unsure()),
        }
    }

    /// A unit variant written as its name; variants with data go to serde_json.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.ws() {
            Some(b'"') => visitor.visit_enum(UnitVariant(self)),
            _ => Err(self.unsure()),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip()?;
        visitor.visit_unit()
    }
}

/// An array's elements.
struct Elements<'r, 'a> {
    reader: &'r mut Reader<'a>,
    first: bool,
}

impl<'a> de::SeqAccess<'a> for Elements<'_, 'a> {
    type Error = Unsure;

    fn next_element_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.reader.more(&mut self.first, b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

/// An object's entries.
struct Entries<'r, 'a> {
    reader: &'r mut Reader<'a>,
    first: bool,
}

impl<'a> de::MapAccess<'a> for Entries<'_, 'a> {
    type Error = Unsure;

    fn next_key_seed<K: DeserializeSeed<'a>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.reader.more(&mut self.first, b'}')? {
            return Ok(None);
        }
        match self.reader.peek() {
            Some(b'"') => seed.deserialize(Key(&mut *self.reader)).map(Some),
            _ => Err(self.reader.unsure()),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value> {
        self.reader.colon()?;
        seed.deserialize(&mut *self.reader)
    }
}

/// An object's key, at its opening quote: a string to every target but numbers, booleans
/// and bytes (which serde_json reads out of the quotes, and this leaves to it).
struct Key<'r, 'a>(&'r mut Reader<'a>);

impl<'de> de::Deserializer<'de> for Key<'_, 'de> {
    type Error = Unsure;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0.string()?)
    }

    unsure! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_bytes deserialize_byte_buf
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name == RAW_VALUE {
            return Err(self.0.unsure());
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_enum(self.0, name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        char str string unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

impl Key<'_, '_> {
    fn unsure(self) -> Unsure {
        self.0.unsure()
    }
}

/// An enum's unit variant, written as its name.
struct UnitVariant<'r, 'a>(&'r mut Reader<'a>);

impl<'a> de::EnumAccess<'a> for UnitVariant<'_, 'a> {
    type Error = Unsure;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'a>>(self, seed: S) -> Result<(S::Value, Self)> {
        let variant = seed.deserialize(&mut *self.0)?;
        Ok((variant, self))
    }
}

impl<'a> de::VariantAccess<'a> for UnitVariant<'_, 'a> {
    type Error = Unsure;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, _: T) -> Result<T::Value> {
        Err(self.0.unsure())
    }

    fn tuple_variant<V: Visitor<'a>>(self, _: usize, _: V) -> Result<V::Value> {
        Err(self.0.unsure())
    }

    fn struct_variant<V: Visitor<'a>>(self, _: &'static [&'static str], _: V) -> Result<V::Value> {
        Err(self.0.unsure())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde::de::DeserializeOwned;
    use std::borrow::Cow;
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Quantity<'a> {
        value: Option<f64>,
        #[serde(default, borrow)]
        unit: Option<Cow<'a, str>>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Reading<'a> {
        #[serde(borrow)]
        device: Option<Cow<'a, str>>,
        ts: Option<i64>,
        #[serde(default)]
        heartbeat: bool,
        temp_c: Option<f64>,
        #[serde(borrow)]
        temperature: Option<Quantity<'a>>,
        #[serde(borrow)]
        humidity: Option<Quantity<'a>>,
        rssi: Option<i8>,
        fw: Option<&'a str>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Heat,
        Cool,
        Fan(u8),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Shapes<'a> {
        mode: Option<Mode>,
        #[serde(borrow)]
        tags: Option<Vec<&'a str>>,
        pair: Option<(u32, bool)>,
        #[serde(borrow)]
        counts: Option<HashMap<&'a str, u64>>,
        by_id: Option<BTreeMap<u32, String>>,
        nothing: Option<()>,
        letter: Option<char>,
        ratio: Option<f32>,
        big: Option<u128>,
        #[serde(flatten)]
        rest: BTreeMap<String, serde_json::Value>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        a: u8,
    }

    const PAYLOAD: &str = r#"{"device":"t-7","ts":1700000000007,"temperature":{"value":67.0,"unit":"F"},"setpoint":{"value":68.0,"unit":"F"},"humidity":{"value":41.5,"unit":"%"},"fw":"3.1.0","site":"plant-7","line":"line-2","model":"TX-300","rssi":-61,"uptime_s":7,"battery":{"value":3.61,"unit":"V"}}     "#;

    /// The fast path over text.
    fn from_str<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
        from_slice(text.as_bytes())
    }

    /// Bytes the fast path answered for as text: it answers only for UTF-8.
    fn utf8(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes)
            .unwrap_or_else(|e| panic!("the fast path answered for {bytes:?}, not UTF-8: {e}"))
    }

    /// Where the fast path answers, serde_json answers the same (a `Value` is compared
    /// as printed, so `-0.0` and `0.0` differ); returns whether it answered.
    fn agrees<'a, T>(text: &'a (impl AsRef<[u8]> + ?Sized)) -> bool
    where
        T: Deserialize<'a> + PartialEq + Debug,
    {
        let Some(fast) = from_slice::<T>(text.as_ref()) else {
            return false;
        };
        let text = utf8(text.as_ref());
        match serde_json::from_str::<T>(text) {
            Ok(slow) => assert_eq!(fast, slow, "{text:?}"),
            Err(e) => panic!("the fast path read {text:?} as {fast:?}; serde_json: {e}"),
        }
        true
    }

    fn agrees_as_value(text: &(impl AsRef<[u8]> + ?Sized)) -> bool {
        let Some(fast) = from_slice::<serde_json::Value>(text.as_ref()) else {
            return false;
        };
        let text = utf8(text.as_ref());
        let slow: serde_json::Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("the fast path read {text:?}; serde_json: {e}"));
        assert_eq!(fast.to_string(), slow.to_string(), "{text:?}");
        true
    }

    fn agrees_bitwise<T: DeserializeOwned + Debug>(text: &str, bits: impl Fn(&T) -> u64) -> bool {
        let Some(fast) = from_slice::<T>(text.as_bytes()) else {
            return false;
        };
        let slow: T = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("the fast path read {text:?} as {fast:?}; serde_json: {e}"));
        assert_eq!(
            bits(&fast),
            bits(&slow),
            "{text:?}: {fast:?} against {slow:?}"
        );
        true
    }

    #[test]
    fn reads_a_device_payload_as_serde_json_does() {
        assert!(agrees::<Reading>(PAYLOAD));
        assert!(agrees_as_value(PAYLOAD));
        // Strings are lent from the payload, as serde_json lends them.
        assert_eq!(from_str::<Reading>(PAYLOAD).unwrap().fw, Some("3.1.0"));
    }

    /// Every one-byte deletion, insertion and replacement of a payload (bytes that break its
    /// UTF-8 too): whatever the fast path accepts is UTF-8, and serde_json accepts it with
    /// the same value.
    #[test]
    fn a_damaged_payload_is_read_as_serde_json_reads_it_or_left_to_it() {
        let docs = [
            PAYLOAD,
            r#"{"a":[1,-2,3.5e3,true,false,null,"x"],"b":{"c":{}},"d":[],"e":-0,"f":0.0}"#,
            r#"[{"value":1,"unit":"C"},{"value":null}, {"value" : 2.5 , "unit" : "K" }]"#,
            "{\n        \"value\" :\t[ 1 ,\r\n                2 ]  ,        \"unit\":\"F\"}         \n ",
        ];
        let inserts = b"{}[],:\"\\ \t\n0123456789-+.eEntfaulrs\x01\x80\xa9\xc3\xe2\xff";
        let (mut tried, mut answered) = (0, 0);
        for doc in docs {
            let bytes = doc.as_bytes();
            let mut mutants = Vec::new();
            for at in 0..bytes.len() {
                let mut v = bytes.to_vec();
                v.remove(at);
                mutants.push(v);
                for &b in inserts {
                    let mut v = bytes.to_vec();
                    v.insert(at, b);
                    mutants.push(v);
                    let mut v = bytes.to_vec();
                    v[at] = b;
                    mutants.push(v);
                }
            }
            for m in &mutants {
                let text = m.as_slice();
                tried += 1;
                let hits = [
                    agrees_as_value(text),
                    agrees::<Reading>(text),
                    agrees::<Vec<Quantity>>(text),
                    agrees::<Shapes>(text),
                ];
                answered += hits.iter().filter(|&&h| h).count();
            }
        }
        // Most one-byte changes inside a string or number leave valid JSON the fast path reads.
        assert!(
            answered > tried / 4,
            "answered {answered} of {tried} mutants"
        );
    }

    /// Strings with other characters than ASCII are read (checked as UTF-8 one by one),
    /// and a payload with bytes that are not UTF-8 anywhere (in a string the target keeps,
    /// one it ignores, a key, or after the value) is left to the caller.
    #[test]
    fn text_is_checked_as_it_is_read() {
        let kept =
            r#"{"device":"Gerät-é","temperature":{"value":21.5,"unit":"°C"},"clé":"château 😀"}"#;
        assert!(agrees::<Reading>(kept));
        assert_eq!(
            from_str::<Reading>(kept).unwrap().device.unwrap(),
            "Gerät-é"
        );
        for bad in [
            &b"{\"device\":\"t-\xff\"}"[..],
            b"{\"site\":\"plant \xc3\"}",
            b"{\"site\":\"\xe2\x82\"}",
            b"{\"site\":\"\xed\xa0\x80\"}",
            b"{\"ts\":1}\x80",
            b"{\"t\xffs\":1}",
            b"{\"cl\xc3\":1,\"ts\":1}",
        ] {
            assert!(from_slice::<Reading>(bad).is_none(), "{bad:?}");
            assert!(from_slice::<serde_json::Value>(bad).is_none(), "{bad:?}");
        }
    }

    /// Values nobody reads are passed over as serde_json ignores them: whatever it
    /// refuses is left to it, and nesting counts as for values read.
    #[test]
    fn ignored_values_are_checked_as_serde_json_checks_them() {
        for text in [
            r#"{"x":{"a":[1,{"b":[[],{"c":null}]},"s"],"t":true,"f":false},"ts":2}"#,
            r#"{ "x" : [ 1 , { "b" : [ ] } ] , "y" : { } , "ts" : 3 }"#,
        ] {
            assert!(agrees::<Reading>(text), "{text}");
        }
        for text in [
            r#"{"x":[1,]}"#,
            r#"{"x":{"a":1,}}"#,
            r#"{"x":{"a"}}"#,
            r#"{"x":{"a":}}"#,
            r#"{"x":[01]}"#,
            r#"{"x":{"a":1 "b":2}}"#,
            r#"{"x":[}"#,
            r#"{"x":{]}"#,
            r#"{"x":[1}"#,
            r#"{"x":1.}"#,
            r#"{"x":[1e]}"#,
            r#"{"x":[-]}"#,
            r#"{"x":[1 2]}"#,
            r#"{"x":{1:2}}"#,
            r#"{"x":[nul]}"#,
            r#"{"x":[,1]}"#,
            r#"{"x":{,}}"#,
            r#"{"x":[[1]"#,
        ] {
            assert!(from_str::<Reading>(text).is_none(), "{text}");
            assert!(serde_json::from_str::<Reading>(text).is_err(), "{text}");
        }
        // Nesting counts as for values read: the struct is one level, 63 more fit.
        let nest = |n: usize| format!(r#"{{"x":{}{},"ts":1}}"#, "[".repeat(n), "]".repeat(n));
        assert!(agrees::<Reading>(&nest(MAX_DEPTH as usize - 1)));
        assert!(from_str::<Reading>(&nest(MAX_DEPTH as usize)).is_none());
        assert!(serde_json::from_str::<Reading>(&nest(MAX_DEPTH as usize)).is_ok());
    }

    #[test]
    fn numbers_come_out_to_the_same_bits() {
        let f = |v: &f64| v.to_bits();
        let mut fast = 0;
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "1",
            "-1",
            "70.7",
            "68.0",
            "3.61",
            "-61",
            "41.5",
            "1700000000007",
            "0.1",
            "0.30000000000000004",
            "-0.0",
            "1e5",
            "1E5",
            "1e+5",
            "1e-5",
            "2.5E-3",
            "1e22",
            "1e23",
            "1e-22",
            "1e-23",
            "9007199254740992",
            "9007199254740993",
            "9007199254740993.0",
            "9007199254740992.5",
            "1.7976931348623157e308",
            "5e-324",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "-9223372036854775809",
            "-9999999999999999999",
            "1234567890123456789",
            "12345678901234567890",
            "0.000000000000000000001",
            "1e0000",
            "1e00001",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "--1",
            "0x1",
            "1.5.5",
            "1e5e5",
            "Infinity",
            "NaN",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Decimals as devices print them, and some that are not.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = 1 + (x % 18) as usize;
            let point = (x >> 8) as usize % (digits + 1);
            let mut s = String::new();
            if x & (1 << 20) != 0 {
                s.push('-');
            }
            let number = format!(
                "{:0width$}",
                (x >> 24) % 10u64.pow(digits as u32),
                width = digits
            );
            let number = number.trim_start_matches('0');
            let number = if number.is_empty() { "0" } else { number };
            s.push_str(&number[..point.min(number.len())]);
            if point < number.len() {
                if point == 0 {
                    s.push('0');
                }
                s.push('.');
                s.push_str(&number[point..]);
            }
            if x & (1 << 21) != 0 {
                s.push_str(&format!("e{}", (x >> 40) as i64 % 30 - 15));
            }
            texts.push(s);
        }
        for text in &texts {
            if agrees_bitwise::<f64>(text, f) {
                fast += 1;
            }
            agrees_bitwise::<i64>(text, |v| *v as u64);
            agrees_bitwise::<u64>(text, |v| *v);
            agrees_bitwise::<u8>(text, |v| u64::from(*v));
            agrees_as_value(text);
            agrees_as_value(&format!("[{text}]"));
        }
        for common in ["70.7", "-61", "1700000000007", "3.61", "-0.0", "2.5E-3"] {
            assert!(
                from_str::<f64>(common).is_some(),
                "{common} takes the fast path"
            );
        }
        assert!(
            fast > texts.len() / 2,
            "{fast} of {} numbers read fast",
            texts.len()
        );
    }

    /// Each target serde supports, in shapes that suit it and shapes that do not.
    #[test]
    fn every_kind_of_target_is_read_as_serde_json_reads_it() {
        let shapes = [
            r#"{"mode":"heat"}"#,
            r#"{"mode":"fan"}"#,
            r#"{"mode":{"fan":3}}"#,
            r#"{"mode":"dry"}"#,
            r#"{"mode":1}"#,
            r#"{"tags":["a","b"],"pair":[7,true]}"#,
            r#"{"tags":["a\"b"]}"#,
            r#"{"pair":[7]}"#,
            r#"{"pair":[7,true,1]}"#,
            r#"{"counts":{"a":1,"b":2},"by_id":{"1":"x"}}"#,
            r#"{"counts":{"a":1,"a":2}}"#,
            r#"{"nothing":null,"letter":"é","ratio":0.1,"big":1}"#,
            r#"{"letter":"ab"}"#,
            r#"{"extra":[1,{"x":null}],"more":"text"}"#,
            r#"[null,["x"]]"#,
            r#"{"mode":"heat","mode":"cool"}"#,
        ];
        for text in shapes {
            agrees::<Shapes>(text);
            agrees_as_value(text);
        }
        assert!(from_str::<Shapes>(shapes[0]).is_some());
        assert!(from_str::<Shapes>(shapes[5]).is_some());
        assert!(from_str::<Shapes>(shapes[13]).is_some());
        for text in [
            r#"{"a":1}"#,
            r#"{"a":1,"b":2}"#,
            r#"{"a":300}"#,
            r#"[1]"#,
            "null",
        ] {
            agrees::<Strict>(text);
        }
        for text in [
            "true", "false", "null", r#""s""#, "[]", "{}", "  1  ", "1 2", "",
        ] {
            agrees::<bool>(text);
            agrees::<()>(text);
            agrees::<&str>(text);
            agrees::<Option<u8>>(text);
            agrees::<Vec<u8>>(text);
            agrees_as_value(text);
        }
    }

    /// A field read leniently: its error is caught and the field becomes `None`.
    fn lenient<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
    where
        D: de::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(T::deserialize(d).ok())
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Outer {
        #[serde(deserialize_with = "lenient")]
        x: Option<Strict>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Top(#[serde(deserialize_with = "lenient")] Option<Outer>);

    #[derive(Debug, PartialEq, Deserialize)]
    struct Pairs(#[serde(deserialize_with = "lenient")] Option<(u8, u8)>);

    /// A field that keeps the text of the error it caught.
    fn keep<'de, D: de::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<std::result::Result<u8, String>, D::Error> {
        Ok(u8::deserialize(d).map_err(|e| e.to_string()))
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Kept {
        #[serde(deserialize_with = "keep")]
        x: std::result::Result<u8, String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Reading2 {
        #[serde(deserialize_with = "lenient")]
        x: Option<f64>,
        y: Option<u8>,
    }

    /// serde_json reads to the end of an array or object before an error surfaces; a
    /// `Deserialize` impl that catches the error goes on from there. So once any error is
    /// made, the read is serde_json's.
    #[test]
    fn an_error_caught_by_the_target_leaves_the_read_to_serde_json() {
        for text in [
            r#"{"x":{"a":300}"#,
            r#"{"x":{"a":300}}"#,
            r#"{"x":{"a":3}}"#,
        ] {
            agrees::<Outer>(text);
            agrees::<Top>(text);
        }
        for text in ["[[1]", "[[1],[2,3]]", "[[1,2]]"] {
            agrees::<Vec<Pairs>>(text);
        }
        // Numbers this reader leaves to serde_json, which reads them.
        for text in [
            r#"{"x":1e300,"y":1}"#,
            r#"{"x":12345678901234567890123,"y":1}"#,
            r#"{"x":"text","y":1}"#,
            r#"{"x":0.5,"y":1}"#,
        ] {
            agrees::<Reading2>(text);
        }
        assert!(from_str::<Reading2>(r#"{"x":1e300,"y":1}"#).is_none());
        assert!(from_str::<Reading2>(r#"{"x":0.5,"y":1}"#).is_some());
        // An error's text is serde_json's, position and all.
        assert!(agrees::<Kept>(r#"{"x":3}"#));
        assert!(from_str::<Kept>(r#"{"x":300}"#).is_none());
        agrees::<Kept>(r#"{"x":300}"#);
        assert!(from_str::<Outer>(r#"{"x":{"a":300}"#).is_none());
        assert!(from_str::<Vec<Pairs>>("[[1]").is_none());
        assert!(from_str::<Outer>(r#"{"x":{"a":3}}"#).is_some());
    }

    #[test]
    fn deep_nesting_is_left_to_serde_json() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(agrees_as_value(&deep(MAX_DEPTH as usize)));
        assert!(from_str::<serde_json::Value>(&deep(MAX_DEPTH as usize + 1)).is_none());
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH as usize + 1)).is_ok());
    }
}
