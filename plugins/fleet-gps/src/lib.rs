//! GPS positions from vehicles: one MQTT message carries a batch of fixes from one vehicle,
//! published on `.../<vehicle-id>/gps` (e.g. `fleet/v-17/gps`); each fix becomes one record keyed by the vehicle.
//!
//! Payload: `{"positions": [{"ts": 1700000000000, "lat": 52.1, "lon": 4.3,
//! "speed_kmh": 48.2, "heading": 270}, ...]}`. A batch with any invalid fix is rejected as a
//! whole (`position.invalid`, naming the fix), so a vehicle's track is never silently
//! thinned. An empty batch is skipped. Config: `max_positions` (default 1000).

use serde::{Deserialize, Serialize};
use weir_sdk::{Config, Emit, Message, Plugin, Record, Records, Rejection};

/// One GPS fix (schema: `fleet-gps.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Position {
    pub vehicle_id: String,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: Option<f32>,
    pub heading_deg: Option<f32>,
    pub seq: i32,
}

#[derive(Deserialize)]
struct Fix {
    ts: i64,
    lat: f64,
    lon: f64,
    speed_kmh: Option<f32>,
    heading: Option<f32>,
}

#[derive(Deserialize)]
struct Batch {
    positions: Vec<Fix>,
}

/// The plugin: a cap on positions per message.
#[derive(Debug)]
pub struct FleetGps {
    max_positions: usize,
}

fn invalid(index: usize, why: String) -> Rejection {
    Rejection::new("position.invalid", format!("position {index}: {why}"))
}

impl Plugin for FleetGps {
    type Record<'m> = Position;

    fn init(config: &Config) -> Result<Self, String> {
        Ok(FleetGps {
            max_positions: config.parse_or("max_positions", 1000)?,
        })
    }

    fn transform(&self, msg: &Message) -> weir_sdk::Result<Position> {
        let mut levels = msg.topic.rsplit('/');
        let vehicle = match (levels.next(), levels.next()) {
            (Some("gps"), Some(v)) if !v.is_empty() => v,
            _ => {
                return Err(Rejection::new(
                    "topic.unexpected",
                    format!("topic {:?} does not end in <vehicle-id>/gps", msg.topic),
                ));
            }
        };
        let batch: Batch = msg.json()?;
        if batch.positions.is_empty() {
            return Ok(Emit::Skip);
        }
        if batch.positions.len() > self.max_positions {
            return Err(Rejection::new(
                "batch.too-large",
                format!(
                    "{} positions in one message; at most {} allowed",
                    batch.positions.len(),
                    self.max_positions
                ),
            ));
        }
        let mut records = Records::with_capacity(batch.positions.len());
        for (i, fix) in batch.positions.into_iter().enumerate() {
            if !(fix.lat.is_finite() && (-90.0..=90.0).contains(&fix.lat)) {
                return Err(invalid(
                    i,
                    format!("latitude {} is outside -90..90", fix.lat),
                ));
            }
            if !(fix.lon.is_finite() && (-180.0..=180.0).contains(&fix.lon)) {
                return Err(invalid(
                    i,
                    format!("longitude {} is outside -180..180", fix.lon),
                ));
            }
            if fix.lat == 0.0 && fix.lon == 0.0 {
                return Err(invalid(i, "0,0 is the receiver's no-fix value".into()));
            }
            if let Some(s) = fix.speed_kmh
                && !(0.0..=500.0).contains(&s)
            {
                return Err(invalid(i, format!("speed {s} km/h is outside 0..500")));
            }
            if let Some(h) = fix.heading
                && !(0.0..360.0).contains(&h)
            {
                return Err(invalid(i, format!("heading {h} is outside 0..360")));
            }
            records.push(
                Record::from(Position {
                    vehicle_id: vehicle.to_owned(),
                    ts_ms: fix.ts,
                    lat: fix.lat,
                    lon: fix.lon,
                    speed_kmh: fix.speed_kmh,
                    heading_deg: fix.heading,
                    seq: i as i32,
                })
                .with_key(vehicle),
            );
        }
        Ok(Emit::Records(records))
    }
}

weir_sdk::export_plugin!(FleetGps, schema = "../fleet-gps.avsc");

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::check_fixtures;

    fn run(topic: &str, payload: &str) -> weir_sdk::Result<Position> {
        FleetGps::init(&Config::default())
            .unwrap()
            .transform(&Message::new(topic, payload))
    }

    #[test]
    fn one_record_per_position_keyed_by_vehicle() {
        let out = run(
            "fleet/v-17/gps",
            r#"{"positions":[{"ts":1,"lat":52.1,"lon":4.3,"speed_kmh":48.5},{"ts":2,"lat":52.2,"lon":4.4,"heading":90}]}"#,
        )
        .unwrap();
        let Emit::Records(records) = out else {
            panic!("{out:?}")
        };
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.key.as_deref() == Some("v-17")));
        assert_eq!(records[1].value.heading_deg, Some(90.0));
        assert_eq!(records[1].value.seq, 1);
    }

    #[test]
    fn invalid_coordinates_reject_the_batch_and_name_the_fix() {
        let err = run(
            "fleet/v-1/gps",
            r#"{"positions":[{"ts":1,"lat":52,"lon":4},{"ts":2,"lat":91,"lon":4}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, "position.invalid");
        assert!(err.reason.starts_with("position 1:"), "{}", err.reason);
        assert_eq!(
            run(
                "fleet/v-1/gps",
                r#"{"positions":[{"ts":1,"lat":0,"lon":0}]}"#
            )
            .unwrap_err()
            .code,
            "position.invalid"
        );
        assert_eq!(
            run(
                "fleet/v-1/gps",
                r#"{"positions":[{"ts":1,"lat":1,"lon":-181}]}"#
            )
            .unwrap_err()
            .code,
            "position.invalid"
        );
    }

    #[test]
    fn topic_and_shape_are_checked() {
        assert_eq!(
            run("trucks/v-1", r#"{"positions":[]}"#).unwrap_err().code,
            "topic.unexpected"
        );
        assert_eq!(
            run("fleet/v-1/gps", r#"{"pos":[]}"#).unwrap_err().code,
            "payload.malformed"
        );
        assert_eq!(run("fleet/v-1/gps", r#"{"positions":[]}"#), Ok(Emit::Skip));
    }

    #[test]
    fn fixtures() {
        check_fixtures::<FleetGps>(
            &Config::default(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"),
        );
    }
}
