//! Energy meters that publish a fixed binary frame instead of JSON, to show non-JSON decoding.
//!
//! Frame (20 bytes, little-endian):
//!
//! | bytes  | field                                          |
//! |--------|------------------------------------------------|
//! | 0      | frame version, must be 1                       |
//! | 1..5   | meter id, u32                                  |
//! | 5..13  | timestamp, u64 ms since the Unix epoch         |
//! | 13..17 | energy register, u32, fixed point 0.001 kWh    |
//! | 17     | flags: bit 0 tamper, 1 battery low, 2 reverse  |
//! | 18..20 | CRC-16/CCITT-FALSE of bytes 0..18, u16         |

use serde::Serialize;
use weir_sdk::{Config, Emit, Message, Plugin, Rejection};

/// Frame length in bytes.
pub const FRAME_LEN: usize = 20;
const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// One decoded frame (schema: `meter.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub meter_id: i64,
    pub ts_ms: i64,
    pub energy_wh: i64,
    pub energy_kwh: f64,
    pub tamper: bool,
    pub battery_low: bool,
    pub reverse_flow: bool,
}

/// Encode a frame; used by the device simulator and tests.
pub fn encode_frame(meter_id: u32, ts_ms: u64, energy_wh: u32, flags: u8) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0] = 1;
    f[1..5].copy_from_slice(&meter_id.to_le_bytes());
    f[5..13].copy_from_slice(&ts_ms.to_le_bytes());
    f[13..17].copy_from_slice(&energy_wh.to_le_bytes());
    f[17] = flags;
    let crc = CRC.checksum(&f[..18]);
    f[18..20].copy_from_slice(&crc.to_le_bytes());
    f
}

/// The plugin; it takes no config.
#[derive(Debug)]
pub struct Meter;

impl Plugin for Meter {
    type Record<'m> = Reading;

    fn init(config: &Config) -> Result<Self, String> {
        match config.pairs().first() {
            Some((k, _)) => Err(format!("the meter plugin takes no config, got key `{k}`")),
            None => Ok(Meter),
        }
    }

    fn transform(&self, msg: &Message) -> weir_sdk::Result<Reading> {
        let f: &[u8; FRAME_LEN] = msg.payload.as_slice().try_into().map_err(|_| {
            Rejection::new(
                "frame.length",
                format!("frame is {} bytes; expected {FRAME_LEN}", msg.payload.len()),
            )
        })?;
        let sent = u16::from_le_bytes([f[18], f[19]]);
        let computed = CRC.checksum(&f[..18]);
        if sent != computed {
            return Err(Rejection::new(
                "frame.checksum",
                format!("checksum is {sent:#06x} but the frame's bytes give {computed:#06x}"),
            ));
        }
        if f[0] != 1 {
            return Err(Rejection::new(
                "frame.version",
                format!("frame version {} is not supported (expected 1)", f[0]),
            ));
        }
        let flags = f[17];
        if flags & !0b111 != 0 {
            return Err(Rejection::new(
                "frame.flags",
                format!("reserved flag bits set: {flags:#010b}"),
            ));
        }
        let le_u32 = |at: usize| u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
        let ts = u64::from_le_bytes(f[5..13].try_into().expect("8 bytes"));
        let ts_ms = i64::try_from(ts).map_err(|_| {
            Rejection::new(
                "frame.timestamp",
                format!("timestamp {ts} does not fit a signed 64-bit millisecond count"),
            )
        })?;
        let energy_wh = le_u32(13);
        Ok(Emit::one(Reading {
            meter_id: le_u32(1).into(),
            ts_ms,
            energy_wh: energy_wh.into(),
            energy_kwh: f64::from(energy_wh) / 1000.0,
            tamper: flags & 1 != 0,
            battery_low: flags & 2 != 0,
            reverse_flow: flags & 4 != 0,
        }))
    }
}

weir_sdk::export_plugin!(Meter, schema = "../meter.avsc");

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::check_fixtures;

    fn run(payload: &[u8]) -> weir_sdk::Result<Reading> {
        Meter.transform(&Message::new("meters/m-1/frame", payload))
    }

    #[test]
    fn decodes_a_frame() {
        let out = run(&encode_frame(
            4_000_123,
            1_700_000_000_000,
            1_234_567,
            0b101,
        ))
        .unwrap();
        assert_eq!(
            out,
            Emit::one(Reading {
                meter_id: 4_000_123,
                ts_ms: 1_700_000_000_000,
                energy_wh: 1_234_567,
                energy_kwh: 1234.567,
                tamper: true,
                battery_low: false,
                reverse_flow: true,
            })
        );
    }

    #[test]
    fn rejects_bad_frames_with_specific_codes() {
        let good = encode_frame(1, 2, 3, 0);
        assert_eq!(run(&good[..19]).unwrap_err().code, "frame.length");
        let mut flipped = good;
        flipped[14] ^= 0x40;
        assert_eq!(run(&flipped).unwrap_err().code, "frame.checksum");
        assert_eq!(
            run(&encode_frame(1, 2, 3, 0x80)).unwrap_err().code,
            "frame.flags"
        );
        let mut v2 = good;
        v2[0] = 2;
        let crc = CRC.checksum(&v2[..18]).to_le_bytes();
        v2[18..].copy_from_slice(&crc);
        assert_eq!(run(&v2).unwrap_err().code, "frame.version");
        assert_eq!(
            run(&encode_frame(1, u64::MAX, 3, 0)).unwrap_err().code,
            "frame.timestamp"
        );
    }

    #[test]
    fn refuses_config() {
        assert!(Meter::init(&Config::new(vec![("x".into(), "1".into())])).is_err());
    }

    #[test]
    fn fixtures() {
        check_fixtures::<Meter>(
            &Config::default(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"),
        );
    }
}
