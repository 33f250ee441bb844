//! Components larger than one control-topic record travel in parts.
//!
//! A component of up to [`PART_BYTES`] is one `wasm/<sha256>` record, as it always was. A
//! larger one (a Python plugin carries its interpreter: ~18 MB) is written as
//! `wasm-part/<sha256>/<index>/<count>` records, each at most [`PART_BYTES`], so that the
//! control topic never needs records of more than a few MiB whatever the component's size.
//! Every key is distinct, so compaction keeps every part. A reader gathers the parts of
//! each sha256 and stores the component once it has all of them; the store checks the
//! bytes against the sha256, so a forged or mismatched part is refused as a whole
//! component would be. What is gathered but incomplete is bounded in memory.

use super::Key;
use std::collections::BTreeMap;

/// The largest part (and the largest component that travels whole).
pub const PART_BYTES: usize = 2 << 20;
/// The most parts a component may have.
pub const MAX_PARTS: u32 = 32;
/// The largest component the control topic carries.
pub const MAX_COMPONENT_BYTES: usize = PART_BYTES * MAX_PARTS as usize;
/// Bytes of incomplete components a reader holds at most, each part charged its bytes
/// and [`PART_OVERHEAD`]; the oldest are let go first.
const MAX_PENDING_BYTES: usize = 2 * MAX_COMPONENT_BYTES;
/// Incomplete components a reader holds at most.
const MAX_PENDING: usize = 64;
/// What a part costs beyond its bytes, so that empty parts are not free.
const PART_OVERHEAD: usize = 256;

/// Whether `sha256` is a digest as weir writes it: 64 lowercase hex digits.
pub fn is_digest(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The records that carry `bytes`, whose sha256 is `sha256`.
pub fn entries(sha256: &str, bytes: &[u8]) -> Vec<(Key, Vec<u8>)> {
    if bytes.len() <= PART_BYTES {
        return vec![(
            Key::Wasm {
                sha256: sha256.to_owned(),
            },
            bytes.to_vec(),
        )];
    }
    let count = bytes.len().div_ceil(PART_BYTES) as u32;
    bytes
        .chunks(PART_BYTES)
        .enumerate()
        .map(|(index, chunk)| {
            (
                Key::WasmPart {
                    sha256: sha256.to_owned(),
                    index: index as u32,
                    count,
                },
                chunk.to_vec(),
            )
        })
        .collect()
}

/// One component's parts as read so far.
#[derive(Debug)]
struct Pending {
    sha256: String,
    count: u32,
    parts: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
}

/// The parts read so far of components not yet complete.
#[derive(Debug, Default)]
pub struct Assembly {
    /// Oldest first.
    pending: Vec<Pending>,
    bytes: usize,
}

impl Assembly {
    /// Take part `index` of `count` of the component `sha256`; the whole component's bytes
    /// once its last part is in (unverified: the store checks them against the sha256).
    /// A part that is empty, over [`PART_BYTES`], out of range or not named by a digest is
    /// ignored. Parts are gathered per sha256 *and* count, so a forged part that claims
    /// another count starts a gathering of its own and cannot cancel the real one.
    pub fn add(&mut self, sha256: &str, index: u32, count: u32, part: &[u8]) -> Option<Vec<u8>> {
        if part.is_empty()
            || part.len() > PART_BYTES
            || index >= count
            || count > MAX_PARTS
            || !is_digest(sha256)
        {
            return None;
        }
        let at = match self
            .pending
            .iter()
            .position(|p| p.sha256 == sha256 && p.count == count)
        {
            Some(i) => i,
            None => {
                self.pending.push(Pending {
                    sha256: sha256.to_owned(),
                    count,
                    parts: BTreeMap::new(),
                    bytes: 0,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[at];
        let charged = part.len() + PART_OVERHEAD;
        if let Some(old) = p.parts.insert(index, part.to_vec()) {
            p.bytes -= old.len() + PART_OVERHEAD;
            self.bytes -= old.len() + PART_OVERHEAD;
        }
        p.bytes += charged;
        self.bytes += charged;
        if p.parts.len() == count as usize {
            let done = self.pending.remove(at);
            self.bytes -= done.bytes;
            return Some(done.parts.into_values().flatten().collect());
        }
        while (self.bytes > MAX_PENDING_BYTES || self.pending.len() > MAX_PENDING)
            && self.pending.len() > 1
        {
            self.bytes -= self.pending.remove(0).bytes;
        }
        None
    }

    /// Bytes held for incomplete components.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(sha: &str, bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        entries(sha, bytes)
            .into_iter()
            .map(|(k, v)| match k {
                Key::WasmPart { index, count, .. } => (index, count, v),
                other => panic!("{other}"),
            })
            .collect()
    }

    #[test]
    fn a_small_component_travels_whole_and_a_large_one_in_parts() {
        let small = entries("s", &[1; PART_BYTES]);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].0, Key::Wasm { sha256: "s".into() });
        let big: Vec<u8> = (0..PART_BYTES * 2 + 5).map(|i| i as u8).collect();
        let p = parts("b", &big);
        assert_eq!(p.len(), 3);
        assert!(
            p.iter()
                .all(|(_, count, v)| *count == 3 && v.len() <= PART_BYTES)
        );
        assert_eq!(p[2].2.len(), 5);
    }

    /// A digest-shaped name for test component `n`.
    fn sha(n: u32) -> String {
        format!("{n:064x}")
    }

    #[test]
    fn parts_in_any_order_give_the_component_back_once() {
        let big: Vec<u8> = (0..PART_BYTES * 3 + 7).map(|i| (i * 7) as u8).collect();
        let b = sha(0xb);
        let mut p = parts(&b, &big);
        p.swap(0, 3);
        p.swap(1, 2);
        let mut a = Assembly::default();
        let mut whole = None;
        for (i, (index, count, v)) in p.iter().enumerate() {
            let got = a.add(&b, *index, *count, v);
            assert_eq!(got.is_some(), i == p.len() - 1);
            let done = got.is_some();
            whole = whole.or(got);
            // A part read again (a replayed record) changes nothing.
            if !done {
                assert!(a.add(&b, *index, *count, v).is_none());
            }
        }
        assert_eq!(whole.unwrap(), big);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn bad_parts_are_ignored_and_what_is_held_is_bounded() {
        let mut a = Assembly::default();
        let x = sha(1);
        assert!(a.add(&x, 0, 2, &vec![0; PART_BYTES + 1]).is_none());
        assert!(a.add(&x, 2, 2, b"a").is_none());
        assert!(a.add(&x, 0, MAX_PARTS + 1, b"a").is_none());
        assert!(a.add(&x, 0, 2, b"").is_none());
        assert!(a.add("not-a-digest", 0, 2, b"a").is_none());
        assert!(a.add(&"a".repeat(4 << 20), 0, 2, b"a").is_none());
        assert_eq!(a.held(), 0);
        // A part claiming another count gathers apart: it cannot cancel the real parts.
        a.add(&x, 0, 2, b"b");
        a.add(&x, 0, 3, b"forged");
        assert_eq!(a.add(&x, 1, 2, b"c"), Some(b"bc".to_vec()));
        // A flood of forged components: the oldest are let go, in bytes and in number.
        let chunk = vec![0; PART_BYTES];
        for i in 0..(2 * MAX_PARTS + 10) {
            a.add(&sha(100 + i), 0, 2, &chunk);
        }
        assert!(a.held() <= MAX_PENDING_BYTES, "{}", a.held());
        for i in 0..10_000 {
            a.add(&sha(1_000_000 + i), 0, 2, b"x");
        }
        assert!(a.pending.len() <= MAX_PENDING, "{}", a.pending.len());
    }
}
