//! Conformance with independent clients: the Rust `schema_registry_converter` crate and
//! Confluent's Python client (`tests/python_client.py`), against a real server on loopback.

use apache_avro::types::Value;
use schema_registry_converter::blocking::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

mod support;

use support::start;

const V1: &str = r#"{"type":"record","name":"Reading","namespace":"io.weir.test","fields":[
    {"name":"device_id","type":"string"},{"name":"temperature_c","type":"double"}]}"#;
const V2: &str = r#"{"type":"record","name":"Reading","namespace":"io.weir.test","fields":[
    {"name":"device_id","type":"string"},{"name":"temperature_c","type":"double"},
    {"name":"humidity_pct","type":["null","double"],"default":null}]}"#;
const BAD: &str = r#"{"type":"record","name":"Reading","namespace":"io.weir.test","fields":[
    {"name":"device_id","type":"long"}]}"#;

fn strategy(schema: &str) -> SubjectNameStrategy {
    SubjectNameStrategy::TopicNameStrategyWithSchema(
        "rust-readings".into(),
        false,
        SuppliedSchema::new(
            Some("io.weir.test.Reading".into()),
            SchemaType::Avro,
            schema.into(),
        ),
    )
}

#[test]
fn schema_registry_converter_round_trips() {
    let s = start();
    let settings = SrSettings::new(s.url.clone());
    let encoder = AvroEncoder::new(settings.clone());
    let decoder = AvroDecoder::new(settings);

    let v1_values = vec![
        ("device_id", Value::String("t-1".into())),
        ("temperature_c", Value::Double(21.5)),
    ];
    let bytes = encoder.encode(v1_values, &strategy(V1)).unwrap();
    assert_eq!(bytes[0], 0, "Confluent wire format: magic byte 0");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());

    let latest: serde_json::Value = reqwest::blocking::get(format!(
        "{}/subjects/rust-readings-value/versions/latest",
        s.url
    ))
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(
        latest["id"], id,
        "auto-registered under the topic's value subject"
    );

    let decoded = decoder.decode(Some(&bytes)).unwrap();
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("device_id".into(), Value::String("t-1".into())),
            ("temperature_c".into(), Value::Double(21.5)),
        ])
    );

    // Compatible evolution gets a new id; old bytes still decode.
    let v2_values = vec![
        ("device_id", Value::String("t-2".into())),
        ("temperature_c", Value::Double(19.0)),
        (
            "humidity_pct",
            Value::Union(1, Box::new(Value::Double(40.5))),
        ),
    ];
    // The encoder caches one schema per subject, so each schema gets its own encoder.
    let bytes2 = AvroEncoder::new(SrSettings::new(s.url.clone()))
        .encode(v2_values, &strategy(V2))
        .unwrap();
    let id2 = u32::from_be_bytes(bytes2[1..5].try_into().unwrap());
    assert_ne!(id, id2);
    let Value::Record(fields) = decoder.decode(Some(&bytes2)).unwrap().value else {
        panic!("not a record")
    };
    assert_eq!(fields[2].1, Value::Union(1, Box::new(Value::Double(40.5))));
    assert!(decoder.decode(Some(&bytes)).is_ok());

    // An incompatible change is refused by the registry, so the client cannot encode.
    let err = AvroEncoder::new(SrSettings::new(s.url.clone()))
        .encode(vec![("device_id", Value::Long(1))], &strategy(BAD))
        .unwrap_err();
    assert!(
        err.to_string().contains("409") || err.to_string().to_lowercase().contains("incompatible"),
        "{err}"
    );
}

/// Confluent's Python client, as an application uses it (`tests/python_client.py`).
#[test]
fn confluent_python_client_conforms() {
    let s = start();
    let out = support::run_python(
        "python_client.py",
        "confluent_kafka.schema_registry.avro",
        &s,
    );
    assert!(out.contains("all checks passed"), "{out}");
}
