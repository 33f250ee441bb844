//! Thermostat readings from three generations of firmware, normalised into one record.
//!
//! - v1: flat Celsius fields: `{"ts": .., "temp_c": 21.5, "setpoint_c": 21.0}`
//! - v2: nested value + unit, Fahrenheit by default: `{"temperature": {"value": 70.7, "unit": "F"}}`
//! - v3: v2 plus optional `"humidity": {"value": 41.0, "unit": "%"}`
//!
//! The device id is the last topic level (`plant/7/thermostat/t-100`); a payload `device`
//! field that disagrees with it is rejected. `{"heartbeat": true}` is skipped.
//! Config: `min_c` / `max_c` bound a plausible reading (default -50 / 100).
//!
//! One crate, three published versions (the plugin lifecycle's examples), chosen by cargo
//! feature and built by `cargo xtask plugins` as `thermostat-<version>.wasm`:
//! - 1.0.0 (default): units C and F; any other unit is rejected with `reading.unit`.
//! - 1.1.0 (`v1_1`): also Kelvin (`"K"`), and the record gains `source_unit` (optional,
//!   default null) — a BACKWARD-compatible evolution (`thermostat-1.1.avsc`).
//! - 2.0.0 (`v2`, for tests): `payload_version` becomes a string — incompatible
//!   (`thermostat-2.avsc`).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::marker::PhantomData;
use weir_sdk::{Config, Emit, Message, Plugin, Rejection};

/// The canonical record of 1.0.0 (schema: `thermostat.avsc`). Its text is borrowed from the
/// message it was read from (`'m`): copied only where JSON escaped it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading<'m> {
    pub device_id: Cow<'m, str>,
    pub ts_ms: i64,
    pub temperature_c: f64,
    pub setpoint_c: Option<f64>,
    pub humidity_pct: Option<f64>,
    pub payload_version: i32,
    pub firmware: Option<Cow<'m, str>>,
}

impl Reading<'_> {
    /// The reading with its text copied, free of the message.
    pub fn into_owned(self) -> Reading<'static> {
        Reading {
            device_id: Cow::Owned(self.device_id.into_owned()),
            firmware: self.firmware.map(|f| Cow::Owned(f.into_owned())),
            ..self
        }
    }
}

/// Text of the payload, borrowed from it: copied only when JSON escaped it. (serde borrows a
/// `Cow` only where it is a field's whole type, so an optional one needs this wrapper.)
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A reading with a unit, as firmware v2+ sends it.
#[derive(Deserialize)]
struct Quantity<'a> {
    value: Option<f64>,
    #[serde(default, borrow)]
    unit: Option<Text<'a>>,
}

/// Every field any firmware sends; which are present tells the shape. Its text is borrowed
/// from the payload: only what the record keeps is copied.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    device: Option<Text<'a>>,
    ts: Option<i64>,
    #[serde(borrow)]
    fw: Option<Text<'a>>,
    #[serde(default)]
    heartbeat: bool,
    // v1
    temp_c: Option<f64>,
    setpoint_c: Option<f64>,
    // v2, v3
    #[serde(borrow)]
    temperature: Option<Quantity<'a>>,
    #[serde(borrow)]
    setpoint: Option<Quantity<'a>>,
    #[serde(borrow)]
    humidity: Option<Quantity<'a>>,
}

/// The record of 1.1.0 (schema: `thermostat-1.1.avsc`): 1.0.0's plus the unit the device sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadingV1_1<'m> {
    #[serde(flatten)]
    pub reading: Reading<'m>,
    /// `"C"`, `"F"` or `"K"` as the device sent it; null for firmware v1 (always Celsius).
    pub source_unit: Option<Cow<'m, str>>,
}

/// The record of 2.0.0 (schema: `thermostat-2.avsc`): `payload_version` as a string.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadingV2<'m> {
    pub device_id: Cow<'m, str>,
    pub ts_ms: i64,
    pub temperature_c: f64,
    pub setpoint_c: Option<f64>,
    pub humidity_pct: Option<f64>,
    pub payload_version: String,
    pub firmware: Option<Cow<'m, str>>,
}

/// What differs between the published versions.
pub trait Generation {
    /// The record this version emits, borrowing from the message as [`Reading`] does.
    type Record<'m>: Serialize;
    /// Whether Kelvin readings are understood.
    const KELVIN: bool;
    /// The version's record from the common reading and the unit the device sent.
    fn record<'m>(reading: Reading<'m>, unit: Option<Cow<'m, str>>) -> Self::Record<'m>;
}

/// thermostat 1.0.0.
#[derive(Debug)]
pub struct V1_0;
/// thermostat 1.1.0.
#[derive(Debug)]
pub struct V1_1;
/// thermostat 2.0.0.
#[derive(Debug)]
pub struct V2;

impl Generation for V1_0 {
    type Record<'m> = Reading<'m>;
    const KELVIN: bool = false;
    fn record<'m>(reading: Reading<'m>, _: Option<Cow<'m, str>>) -> Reading<'m> {
        reading
    }
}

impl Generation for V1_1 {
    type Record<'m> = ReadingV1_1<'m>;
    const KELVIN: bool = true;
    fn record<'m>(reading: Reading<'m>, source_unit: Option<Cow<'m, str>>) -> ReadingV1_1<'m> {
        ReadingV1_1 {
            reading,
            source_unit,
        }
    }
}

impl Generation for V2 {
    type Record<'m> = ReadingV2<'m>;
    const KELVIN: bool = true;
    fn record<'m>(r: Reading<'m>, _: Option<Cow<'m, str>>) -> ReadingV2<'m> {
        ReadingV2 {
            device_id: r.device_id,
            ts_ms: r.ts_ms,
            temperature_c: r.temperature_c,
            setpoint_c: r.setpoint_c,
            humidity_pct: r.humidity_pct,
            payload_version: format!("v{}", r.payload_version),
            firmware: r.firmware,
        }
    }
}

/// The plugin: plausible-range bounds from config; `G` is the published version.
#[derive(Debug)]
pub struct Thermostat<G = V1_0> {
    min_c: f64,
    max_c: f64,
    generation: PhantomData<G>,
}

/// The unit a quantity is in: the device's, or Fahrenheit when it sent none.
fn unit<'q>(q: &'q Quantity<'_>) -> &'q str {
    q.unit.as_ref().map_or("F", |t| &t.0)
}

fn to_celsius(q: &Quantity<'_>, what: &str, kelvin: bool) -> Result<Option<f64>, Rejection> {
    let Some(value) = q.value else {
        return Ok(None);
    };
    let round = |c: f64| (c * 100.0).round() / 100.0;
    match unit(q) {
        "C" | "c" | "°C" => Ok(Some(value)),
        "F" | "f" | "°F" => Ok(Some(round((value - 32.0) * 5.0 / 9.0))),
        "K" if kelvin => Ok(Some(round(value - 273.15))),
        other if kelvin => Err(Rejection::new(
            "reading.unit",
            format!("{what} has unknown unit {other:?}; expected \"C\", \"F\" or \"K\""),
        )),
        other => Err(Rejection::new(
            "reading.unit",
            format!("{what} has unknown unit {other:?}; expected \"C\" or \"F\""),
        )),
    }
}

impl<G> Thermostat<G> {
    fn check_range(&self, what: &str, c: f64) -> Result<f64, Rejection> {
        if c.is_finite() && (self.min_c..=self.max_c).contains(&c) {
            Ok(c)
        } else {
            Err(Rejection::new(
                "reading.out-of-range",
                format!(
                    "{what} {c} °C is outside {} to {} °C",
                    self.min_c, self.max_c
                ),
            ))
        }
    }
}

impl<G: Generation> Plugin for Thermostat<G> {
    type Record<'m>
        = G::Record<'m>
    where
        Self: 'm;

    fn init(config: &Config) -> Result<Self, String> {
        let min_c = config.parse_or("min_c", -50.0)?;
        let max_c = config.parse_or("max_c", 100.0)?;
        if min_c >= max_c {
            return Err(format!("min_c ({min_c}) must be below max_c ({max_c})"));
        }
        Ok(Thermostat {
            min_c,
            max_c,
            generation: PhantomData,
        })
    }

    fn transform<'m>(&'m self, msg: &'m Message) -> weir_sdk::Result<G::Record<'m>> {
        let device_id = msg.last_topic_level();
        if device_id.is_empty() {
            return Err(Rejection::new(
                "topic.unexpected",
                format!("topic {:?} does not end in a device id", msg.topic),
            ));
        }
        let p: Payload<'m> = msg.json()?;
        if let Some(Text(d)) = &p.device
            && d != device_id
        {
            return Err(Rejection::new(
                "device.mismatch",
                format!("payload says device {d:?} but the topic says {device_id:?}"),
            ));
        }
        if p.heartbeat {
            return Ok(Emit::Skip);
        }
        let (version, temperature, setpoint, humidity) = match (&p.temp_c, &p.temperature) {
            (Some(_), Some(_)) => {
                return Err(Rejection::new(
                    "payload.ambiguous",
                    "payload has both `temp_c` (v1) and `temperature` (v2+)",
                ));
            }
            (Some(t), None) => (1, Some(*t), p.setpoint_c, None),
            (None, Some(t)) => {
                let humidity = match &p.humidity {
                    None => None,
                    Some(h) => h.value,
                };
                let setpoint = match &p.setpoint {
                    None => None,
                    Some(s) => to_celsius(s, "setpoint", G::KELVIN)?,
                };
                let version = if p.humidity.is_some() { 3 } else { 2 };
                let temperature = to_celsius(t, "temperature", G::KELVIN)?;
                (version, temperature, setpoint, humidity)
            }
            (None, None) => (0, None, None, None),
        };
        let Some(temperature) = temperature else {
            return Err(Rejection::new(
                "reading.missing",
                "no temperature reading: expected `temp_c` (v1) or `temperature.value` (v2+)",
            ));
        };
        let temperature_c = self.check_range("temperature", temperature)?;
        let setpoint_c = setpoint
            .map(|s| self.check_range("setpoint", s))
            .transpose()?;
        if let Some(h) = humidity
            && !(0.0..=100.0).contains(&h)
        {
            return Err(Rejection::new(
                "reading.out-of-range",
                format!("humidity {h} % is outside 0 to 100 %"),
            ));
        }
        let source_unit = p
            .temperature
            .map(|t| t.unit.map_or(Cow::Borrowed("F"), |u| u.0));
        let reading = Reading {
            device_id: Cow::Borrowed(device_id),
            ts_ms: p.ts.unwrap_or(msg.received_at_ms),
            temperature_c,
            setpoint_c,
            humidity_pct: humidity,
            payload_version: version,
            firmware: p.fw.map(|t| t.0),
        };
        Ok(Emit::one(G::record(reading, source_unit)))
    }
}

#[cfg(not(any(feature = "v1_1", feature = "v2")))]
weir_sdk::export_plugin!(Thermostat<V1_0>, schema = "../thermostat.avsc");
#[cfg(all(feature = "v1_1", not(feature = "v2")))]
weir_sdk::export_plugin!(
    Thermostat<V1_1>,
    schema = "../thermostat-1.1.avsc",
    version = "1.1.0"
);
#[cfg(feature = "v2")]
weir_sdk::export_plugin!(
    Thermostat<V2>,
    schema = "../thermostat-2.avsc",
    version = "2.0.0"
);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::dryrun::LineOutcome;
    use weir_sdk::testing::{check_fixtures, run};

    fn plugin() -> Thermostat {
        Thermostat::init(&Config::default()).unwrap()
    }

    fn v1_1() -> Thermostat<V1_1> {
        Thermostat::init(&Config::default()).unwrap()
    }

    fn reading(payload: &str) -> Reading<'static> {
        match plugin().transform(&Message::new("plant/7/thermostat/t-100", payload)) {
            Ok(Emit::Records(mut r)) if r.len() == 1 => r.remove(0).value.into_owned(),
            other => panic!("expected one record, got {other:?}"),
        }
    }

    fn rejection(payload: &str) -> String {
        match plugin().transform(&Message::new("plant/7/thermostat/t-100", payload)) {
            Err(r) => r.code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn all_three_shapes_normalise_to_celsius() {
        let v1 = reading(r#"{"ts":5,"temp_c":21.5,"setpoint_c":21.0,"fw":"1.4.2"}"#);
        assert_eq!(
            (v1.temperature_c, v1.setpoint_c, v1.payload_version),
            (21.5, Some(21.0), 1)
        );
        let v2 = reading(
            r#"{"ts":5,"temperature":{"value":70.7,"unit":"F"},"setpoint":{"value":69.8}}"#,
        );
        assert_eq!(
            (v2.temperature_c, v2.setpoint_c, v2.payload_version),
            (21.5, Some(21.0), 2)
        );
        let v3 = reading(
            r#"{"ts":5,"temperature":{"value":21.5,"unit":"C"},"humidity":{"value":41.0,"unit":"%"}}"#,
        );
        assert_eq!(
            (v3.temperature_c, v3.humidity_pct, v3.payload_version),
            (21.5, Some(41.0), 3)
        );
        assert_eq!(v3.device_id, "t-100");
    }

    #[test]
    fn escaped_text_reads_as_plain_text() {
        // Borrowed text that JSON escapes is unescaped into its own string.
        let r = reading(
            r#"{"device":"t-\u0031\u00300","temperature":{"value":21.5,"unit":"\u00b0C"},"fw":"2\/1"}"#,
        );
        assert_eq!(
            (r.temperature_c, r.firmware.as_deref()),
            (21.5, Some("2/1"))
        );
        assert_eq!(
            rejection(r#"{"device":"t-\u0032","temperature":{"value":1,"unit":"C"}}"#),
            "device.mismatch"
        );
    }

    #[test]
    fn missing_timestamp_uses_receive_time() {
        let mut m = Message::new("a/t-1", r#"{"temp_c":20}"#);
        m.received_at_ms = 1234;
        let out = run(&plugin(), &m);
        let LineOutcome::Emit { records } = out else {
            panic!("{out:?}")
        };
        assert_eq!(records[0].value["ts_ms"], 1234);
    }

    #[test]
    fn bad_readings_are_rejected_with_specific_codes() {
        assert_eq!(rejection(r#"{"ts":1}"#), "reading.missing");
        assert_eq!(
            rejection(r#"{"temperature":{"unit":"F"}}"#),
            "reading.missing"
        );
        assert_eq!(rejection(r#"{"temp_c":150}"#), "reading.out-of-range");
        assert_eq!(
            rejection(r#"{"temperature":{"value":-80,"unit":"F"}}"#),
            "reading.out-of-range"
        );
        assert_eq!(
            rejection(r#"{"temperature":{"value":20,"unit":"K"}}"#),
            "reading.unit"
        );
        assert_eq!(
            rejection(r#"{"temperature":{"value":20,"unit":"C"},"humidity":{"value":140}}"#),
            "reading.out-of-range"
        );
        assert_eq!(
            rejection(r#"{"temp_c":20,"temperature":{"value":20}}"#),
            "payload.ambiguous"
        );
        assert_eq!(
            rejection(r#"{"device":"t-9","temp_c":20}"#),
            "device.mismatch"
        );
        assert_eq!(rejection("not json"), "payload.malformed");
    }

    #[test]
    fn version_1_1_reads_kelvin_and_names_the_unit() {
        let p = v1_1();
        let m = Message::new(
            "plant/7/thermostat/t-100",
            r#"{"ts":5,"temperature":{"value":294.65,"unit":"K"}}"#,
        );
        let Ok(Emit::Records(r)) = p.transform(&m) else {
            panic!("1.1.0 must accept Kelvin")
        };
        assert_eq!(r[0].value.reading.temperature_c, 21.5);
        assert_eq!(r[0].value.source_unit.as_deref(), Some("K"));
        let v1 = Message::new("plant/7/thermostat/t-100", r#"{"ts":5,"temp_c":20}"#);
        let Ok(Emit::Records(r)) = p.transform(&v1) else {
            panic!("1.1.0 must read firmware v1")
        };
        assert_eq!(r[0].value.source_unit, None);
        let bad = Message::new(
            "plant/7/thermostat/t-100",
            r#"{"temperature":{"value":1,"unit":"R"}}"#,
        );
        assert_eq!(p.transform(&bad).unwrap_err().code, "reading.unit");
    }

    #[test]
    fn version_1_1_emits_what_1_0_emits_plus_the_unit() {
        for payload in [
            r#"{"ts":5,"temp_c":21.5,"setpoint_c":21.0}"#,
            r#"{"ts":5,"temperature":{"value":70.7,"unit":"F"},"setpoint":{"value":69.8}}"#,
        ] {
            let (v1_0, v1_1) = (plugin(), v1_1());
            let m = Message::new("plant/7/thermostat/t-100", payload);
            let (Ok(Emit::Records(old)), Ok(Emit::Records(new))) =
                (v1_0.transform(&m), v1_1.transform(&m))
            else {
                panic!("both versions must emit {payload}")
            };
            assert_eq!(old[0].value, new[0].value.reading);
        }
    }

    #[test]
    fn version_2_reports_the_payload_version_as_text() {
        let p: Thermostat<V2> = Thermostat::init(&Config::default()).unwrap();
        let m = Message::new("plant/7/thermostat/t-100", r#"{"ts":5,"temp_c":20}"#);
        let Ok(Emit::Records(r)) = p.transform(&m) else {
            panic!()
        };
        assert_eq!(r[0].value.payload_version, "v1");
    }

    #[test]
    fn heartbeat_is_skipped() {
        let m = Message::new("a/t-100", r#"{"heartbeat":true}"#);
        assert_eq!(plugin().transform(&m), Ok(Emit::Skip));
    }

    #[test]
    fn config_is_validated() {
        let cfg = |k: &str, v: &str| Config::new(vec![(k.into(), v.into())]);
        assert!(
            Thermostat::<V1_0>::init(&cfg("max_c", "warm"))
                .unwrap_err()
                .contains("max_c")
        );
        assert!(Thermostat::<V1_0>::init(&cfg("min_c", "200")).is_err());
        let narrow = Thermostat::<V1_0>::init(&cfg("max_c", "30")).unwrap();
        assert!(
            narrow
                .transform(&Message::new("a/t", r#"{"temp_c":35}"#))
                .is_err()
        );
    }

    #[test]
    fn fixtures() {
        check_fixtures::<Thermostat>(
            &Config::default(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"),
        );
    }
}
