//! The Confluent wire format: magic byte 0, the 4-byte big-endian schema id, the Avro datum.

/// Prefix an Avro datum with the Confluent wire-format header.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Split a wire-format value into schema id and datum.
pub fn unframe(value: &[u8]) -> Option<(u32, &[u8])> {
    match value {
        [0, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_format_round_trips() {
        let framed = super::frame(0x0102_0304, b"abc");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'a', b'b', b'c']);
        assert_eq!(super::unframe(&framed), Some((0x0102_0304, &b"abc"[..])));
        assert_eq!(super::unframe(b"\x01abcd"), None);
    }
}
