//! The framed batch of contract 1.2 (`framed-plugin`): a batch and its outcomes laid out in
//! one buffer each, as `wit/transform.wit` describes. Both directions live here, the host's
//! (write a batch, read outcomes) and the plugin's (read a batch, write outcomes), so that
//! each is tested against the other. Reading never trusts a length or a count: each is
//! checked against the bytes that are left before anything is allocated for it. What is read
//! borrows from the buffer, and pairs (properties, headers) are checked in place and decoded
//! only when iterated, so reading a reply costs the host a small multiple of the reply at
//! most (a record it keeps is a few words, and no more than a message's limit are kept).

use std::fmt;

/// Why a buffer is not a well-formed frame: what was expected, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Offset of the field that could not be read (of the bad byte, for text).
    pub at: usize,
    /// What was wrong there.
    pub what: String,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed frame at byte {}: {}", self.at, self.what)
    }
}

impl std::error::Error for FrameError {}

/// Outcome tags.
const EMIT: u8 = 0;
const REJECT: u8 = 1;
const SKIP: u8 = 2;

/// Fewest bytes a record takes (absent key, empty value, no headers), and a pair: bound what
/// a count can claim before its items are read.
const MIN_RECORD: usize = 1 + 4 + 4;
const MIN_PAIR: usize = 4 + 4;

/// A cursor over a frame.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Read `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn fail<T>(&self, at: usize, what: impl Into<String>) -> Result<T, FrameError> {
        Err(FrameError {
            at,
            what: what.into(),
        })
    }

    /// The next `n` bytes; a shortfall is reported at `from`, where their field starts.
    /// (The readers of a few bytes are inlined where the host reads outcomes, another crate:
    /// a call each cost more than the read.)
    #[inline]
    fn take(&mut self, n: usize, from: usize, what: &str) -> Result<&'a [u8], FrameError> {
        match self.buf.get(self.at..).and_then(|rest| rest.get(..n)) {
            Some(out) => {
                self.at += n;
                Ok(out)
            }
            None => {
                let left = self.buf.len() - self.at;
                self.fail(from, format!("{what} needs {n} bytes, {left} are left"))
            }
        }
    }

    /// The next `N` bytes, as an array.
    #[inline]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FrameError> {
        let b = self.take(N, self.at, what)?;
        Ok(std::array::from_fn(|i| b[i]))
    }

    #[inline]
    fn u8(&mut self, what: &str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian u32.
    #[inline]
    pub fn u32(&mut self, what: &str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    #[inline]
    fn i64(&mut self, what: &str) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize, what: &str) -> Result<usize, FrameError> {
        let at = self.at;
        let n = self.u32(what)? as usize;
        let left = self.buf.len() - self.at;
        if n.saturating_mul(min) > left {
            return self.fail(
                at,
                format!("{what} is {n}, more than the {left} bytes left can hold"),
            );
        }
        Ok(n)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], FrameError> {
        let at = self.at;
        let n = self.u32(what)? as usize;
        self.take(n, at, what)
    }

    fn str(&mut self, what: &str) -> Result<&'a str, FrameError> {
        let at = self.at + 4;
        let b = self.bytes(what)?;
        crate::text(b)
            .or_else(|e| self.fail(at + e.valid_up_to(), format!("{what} is not UTF-8: {e}")))
    }

    fn opt_str(&mut self, what: &str) -> Result<Option<&'a str>, FrameError> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.str(what).map(Some),
            t => self.fail(at, format!("{what} has presence byte {t}, not 0 or 1")),
        }
    }

    /// Pairs, checked (lengths and UTF-8) but left in the buffer for [`Pairs::iter`].
    fn pairs(&mut self, what: &str) -> Result<Pairs<'a>, FrameError> {
        let start = self.at;
        let n = self.count(MIN_PAIR, what)?;
        for _ in 0..n {
            self.str(what)?;
            self.str(what)?;
        }
        Ok(Pairs {
            raw: &self.buf[start..self.at],
        })
    }

    /// Fail unless every byte was read.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            1 => self.fail(self.at, "1 byte follows the last item"),
            left => self.fail(self.at, format!("{left} bytes follow the last item")),
        }
    }

    /// The next message of a batch.
    pub fn message(&mut self) -> Result<MessageRef<'a>, FrameError> {
        Ok(MessageRef {
            topic: self.str("topic")?,
            payload: self.bytes("payload")?,
            properties: self.pairs("properties")?,
            content_type: self.opt_str("content type")?,
            received_at_ms: self.i64("received-at-ms")?,
        })
    }

    fn record(&mut self) -> Result<RecordRef<'a>, FrameError> {
        Ok(RecordRef {
            key: self.opt_str("record key")?,
            value: self.bytes("record value")?,
            headers: self.pairs("record headers")?,
        })
    }

    /// The next outcome. An emit of more than `max_records` records has them checked but
    /// not kept: [`OutcomeRef::TooManyRecords`].
    pub fn outcome(&mut self, max_records: usize) -> Result<OutcomeRef<'a>, FrameError> {
        let at = self.at;
        match self.u8("outcome tag")? {
            EMIT => {
                let n = self.count(MIN_RECORD, "record count")?;
                if n > max_records {
                    for _ in 0..n {
                        self.record()?;
                    }
                    return Ok(OutcomeRef::TooManyRecords(n));
                }
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(self.record()?);
                }
                Ok(OutcomeRef::Emit(records))
            }
            REJECT => Ok(OutcomeRef::Reject {
                code: self.str("rejection code")?,
                reason: self.str("rejection reason")?,
            }),
            SKIP => Ok(OutcomeRef::Skip),
            t => self.fail(at, format!("outcome tag {t} is none of 0, 1, 2")),
        }
    }
}

/// Name/value pairs (MQTT user properties, Kafka headers), checked and still in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairs<'a> {
    /// The count and the pairs, as framed.
    raw: &'a [u8],
}

impl<'a> Pairs<'a> {
    /// How many pairs there are.
    pub fn len(&self) -> usize {
        u32::from_le_bytes([self.raw[0], self.raw[1], self.raw[2], self.raw[3]]) as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of every name and value together.
    pub fn text_len(&self) -> usize {
        self.raw.len() - 4 - MIN_PAIR * self.len()
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let mut r = Reader::new(self.raw);
        let n = r.u32("count").map_or(0, |n| n as usize);
        // Checked when the frame was read, so these reads succeed.
        (0..n).map_while(move |_| Some((r.str("name").ok()?, r.str("value").ok()?)))
    }
}

/// One message of a framed batch, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub properties: Pairs<'a>,
    pub content_type: Option<&'a str>,
    pub received_at_ms: i64,
}

/// One outcome of a framed reply, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeRef<'a> {
    Emit(Vec<RecordRef<'a>>),
    /// An emit of more records than the reader keeps (well framed, each checked).
    TooManyRecords(usize),
    Reject {
        code: &'a str,
        reason: &'a str,
    },
    Skip,
}

/// One record of an emit outcome, borrowed from the reply; its value is MessagePack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: Option<&'a str>,
    pub value: &'a [u8],
    pub headers: Pairs<'a>,
}

/// The outcomes of a batch of `expected` messages, all of them, or why they are malformed.
/// An outcome's records are kept only up to `max_records` ([`OutcomeRef::TooManyRecords`]).
pub fn read_outcomes(
    buf: &[u8],
    expected: usize,
    max_records: usize,
) -> Result<Vec<OutcomeRef<'_>>, FrameError> {
    let mut r = Reader::new(buf);
    let n = r.u32("outcome count")? as usize;
    if n != expected {
        return r.fail(0, format!("{n} outcomes for {expected} messages"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.outcome(max_records)?);
    }
    r.finish()?;
    Ok(out)
}

/// Append a length or count. Frames hold MQTT messages (at most 256 MiB) and what a plugin
/// built in its memory (at most 4 GiB on wasm32), so every length fits in a u32.
pub fn put_len(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("a framed length is under 4 GiB");
    out.extend_from_slice(&n.to_le_bytes());
}

/// Append bytes with their length.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

/// Append bytes written by `write`, preceded by their length (patched once known). On an
/// error nothing is left of the field but its placeholder: the caller truncates.
pub fn put_bytes_with<E>(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out)?;
    let n = u32::try_from(out.len() - at - 4).expect("a framed length is under 4 GiB");
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    put_len(out, pairs.len());
    for (k, v) in pairs {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// Append one message to a batch (after its count, [`put_len`]).
pub fn put_message(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    properties: &[(String, String)],
    content_type: Option<&str>,
    received_at_ms: i64,
) {
    put_bytes(out, topic.as_bytes());
    put_bytes(out, payload);
    put_pairs(out, properties);
    put_opt_str(out, content_type);
    out.extend_from_slice(&received_at_ms.to_le_bytes());
}

/// Append a rejection.
pub fn put_reject(out: &mut Vec<u8>, code: &str, reason: &str) {
    out.push(REJECT);
    put_bytes(out, code.as_bytes());
    put_bytes(out, reason.as_bytes());
}

/// Append a skip.
pub fn put_skip(out: &mut Vec<u8>) {
    out.push(SKIP);
}

/// Append the head of an emit of `records` records, each then written by [`put_record`].
pub fn put_emit(out: &mut Vec<u8>, records: usize) {
    out.push(EMIT);
    put_len(out, records);
}

/// Append one record, its value written by `value` (MessagePack); on an error the caller
/// truncates what was written of the outcome.
pub fn put_record<E>(
    out: &mut Vec<u8>,
    key: Option<&str>,
    value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    headers: &[(String, String)],
) -> Result<(), E> {
    put_opt_str(out, key);
    put_bytes_with(out, value)?;
    put_pairs(out, headers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What the host writes, the plugin reads back field for field.
    #[test]
    fn a_batch_reads_back_as_written() {
        let props = pairs(&[("site", "plant-7"), ("", "empty name")]);
        let mut buf = Vec::new();
        put_len(&mut buf, 2);
        put_message(
            &mut buf,
            "a/b",
            b"{\"t\":1}",
            &props,
            Some("application/json"),
            -5,
        );
        put_message(&mut buf, "", b"", &[], None, i64::MAX);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u32("count"), Ok(2));
        let m = r.message().unwrap();
        assert_eq!(
            (m.topic, m.payload, m.content_type, m.received_at_ms),
            ("a/b", &b"{\"t\":1}"[..], Some("application/json"), -5)
        );
        assert_eq!(
            m.properties.iter().collect::<Vec<_>>(),
            [("site", "plant-7"), ("", "empty name")]
        );
        assert_eq!((m.properties.len(), m.properties.text_len()), (2, 21));
        let m = r.message().unwrap();
        assert_eq!(
            (m.topic, m.payload, m.content_type, m.received_at_ms),
            ("", &b""[..], None, i64::MAX)
        );
        assert!(m.properties.is_empty());
        assert_eq!(m.properties.iter().count(), 0);
        assert_eq!(r.finish(), Ok(()));
    }

    fn three_outcomes() -> Vec<u8> {
        let mut buf = Vec::new();
        put_len(&mut buf, 3);
        put_emit(&mut buf, 2);
        put_record::<()>(
            &mut buf,
            Some("k"),
            |o| {
                o.push(0x81);
                Ok(())
            },
            &[],
        )
        .unwrap();
        put_record::<()>(&mut buf, None, |_| Ok(()), &pairs(&[("h", "v")])).unwrap();
        put_reject(&mut buf, "reading.bad", "why");
        put_skip(&mut buf);
        buf
    }

    /// What the plugin writes, the host reads back, and only for the batch it sent.
    #[test]
    fn outcomes_read_back_as_written_and_only_for_their_batch() {
        let buf = three_outcomes();
        let out = read_outcomes(&buf, 3, 10).unwrap();
        let OutcomeRef::Emit(records) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (records[0].key, records[0].value),
            (Some("k"), &b"\x81"[..])
        );
        assert!(records[0].headers.is_empty());
        assert_eq!((records[1].key, records[1].value), (None, &b""[..]));
        assert_eq!(records[1].headers.iter().collect::<Vec<_>>(), [("h", "v")]);
        assert_eq!(
            out[1..],
            [
                OutcomeRef::Reject {
                    code: "reading.bad",
                    reason: "why"
                },
                OutcomeRef::Skip,
            ]
        );
        let e = read_outcomes(&buf, 4, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed frame at byte 0: 3 outcomes for 4 messages"
        );
    }

    /// An emit of more records than the reader keeps is checked, not kept.
    #[test]
    fn records_beyond_the_limit_are_counted_not_kept() {
        let buf = three_outcomes();
        let out = read_outcomes(&buf, 3, 1).unwrap();
        assert_eq!(out[0], OutcomeRef::TooManyRecords(2));
        let mut bad = buf.clone();
        bad[9] = 2;
        let e = read_outcomes(&bad, 3, 1).unwrap_err();
        assert_eq!(e.at, 9, "records beyond the limit are still checked: {e}");
    }

    /// Every cut of a well-formed reply, every trailing byte and every bad tag is refused
    /// with its place, and never panics.
    #[test]
    fn malformed_outcomes_are_refused_with_their_place() {
        let buf = three_outcomes();
        for cut in 0..buf.len() {
            let e = read_outcomes(&buf[..cut], 3, 10).unwrap_err();
            assert!(e.at <= cut, "cut at {cut}: {e}");
        }
        // Cut inside the reason's text: reported at its length field (byte 59).
        let e = read_outcomes(&buf[..65], 3, 10).unwrap_err();
        assert_eq!(
            (e.at, e.what.as_str()),
            (59, "rejection reason needs 3 bytes, 2 are left")
        );
        let mut extra = buf.clone();
        extra.push(0);
        let e = read_outcomes(&extra, 3, 10).unwrap_err();
        assert_eq!(
            (e.at, e.what.as_str()),
            (buf.len(), "1 byte follows the last item")
        );
        let mut tag = buf.clone();
        tag[4] = 7;
        let e = read_outcomes(&tag, 3, 10).unwrap_err();
        assert_eq!(
            (e.at, e.what.as_str()),
            (4, "outcome tag 7 is none of 0, 1, 2")
        );
        let mut presence = buf.clone();
        presence[9] = 2;
        let e = read_outcomes(&presence, 3, 10).unwrap_err();
        assert_eq!(
            (e.at, e.what.as_str()),
            (9, "record key has presence byte 2, not 0 or 1")
        );
    }

    /// A count that claims more items than the bytes left could hold fails before anything
    /// is allocated for it, records and pairs alike; text that is not UTF-8 fails at its bad
    /// byte, with the field's name.
    #[test]
    fn lying_counts_and_bad_text_fail_without_allocating() {
        let mut buf = Vec::new();
        put_len(&mut buf, 1);
        put_emit(&mut buf, u32::MAX as usize);
        let e = read_outcomes(&buf, 1, usize::MAX).unwrap_err();
        assert_eq!(e.at, 5);
        assert!(e.what.contains("record count is 4294967295"), "{e}");
        let mut buf = Vec::new();
        put_len(&mut buf, 1);
        put_emit(&mut buf, 1);
        buf.push(0);
        put_bytes(&mut buf, b"");
        put_len(&mut buf, 1 << 30);
        let e = read_outcomes(&buf, 1, 10).unwrap_err();
        assert_eq!(e.at, 14);
        assert!(e.what.contains("record headers is 1073741824"), "{e}");
        let mut buf = Vec::new();
        put_len(&mut buf, 1);
        buf.push(REJECT);
        put_bytes(&mut buf, b"code");
        put_bytes(&mut buf, b"ok\xff");
        let e = read_outcomes(&buf, 1, 10).unwrap_err();
        assert_eq!(e.at, 19);
        assert!(e.what.starts_with("rejection reason is not UTF-8"), "{e}");
    }
}
