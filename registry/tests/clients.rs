//! Conformance with independent clients: the Rust `schema_registry_converter` crate and
//! Confluent's Python client (`tests/python_client.py`), against a real server on loopback.

use apache_avro::types::Value;
use schema_registry_converter::blocking::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use std::process::Command;

/// A registry served from its own thread (the blocking clients cannot run inside tokio).
struct Server {
    url: String,
    _dir: tempfile::TempDir,
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            weir_registry::serve(listener, &data, Default::default(), std::future::pending())
                .await
                .unwrap();
        });
    });
    Server {
        url: rx.recv().unwrap(),
        _dir: dir,
    }
}

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

/// Confluent's Python client. `scripts/test` installs it into a virtualenv and points
/// `WEIR_TEST_PYTHON` at that interpreter.
#[test]
fn confluent_python_client_conforms() {
    let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import confluent_kafka.schema_registry.avro"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{python} cannot import confluent_kafka: run the suite with scripts/test (it installs the client), or set WEIR_TEST_PYTHON to a Python with `confluent-kafka[avro,schemaregistry]`"
    );
    let s = start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&s.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
