//! The Confluent wire format: magic byte 0, the 4-byte big-endian schema id, the Avro datum.

/// Bytes of the header: the magic byte and the schema id.
pub const HEADER_LEN: usize = 5;

/// Prefix an Avro datum with the Confluent wire-format header, in place: a datum written
/// with [`HEADER_LEN`] bytes of spare capacity is framed without a copy or an allocation.
pub fn frame(schema_id: u32, mut datum: Vec<u8>) -> Vec<u8> {
    let len = datum.len();
    datum.extend_from_slice(&[0; HEADER_LEN]);
    datum.copy_within(..len, HEADER_LEN);
    datum[0] = 0;
    datum[1..HEADER_LEN].copy_from_slice(&schema_id.to_be_bytes());
    datum
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
        let framed = super::frame(0x0102_0304, b"abc".to_vec());
        assert_eq!(framed, [0, 1, 2, 3, 4, b'a', b'b', b'c']);
        assert_eq!(super::unframe(&framed), Some((0x0102_0304, &b"abc"[..])));
        assert_eq!(super::unframe(b"\x01abcd"), None);
    }
}
