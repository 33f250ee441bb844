//! The admin API's vocabulary: what each request sends and each answer holds. The server
//! (`admin`) and the client (`admin_client`) use these same types, and a test holds
//! `openapi.json` to them, so the three descriptions cannot drift apart.

use serde::{Deserialize, Serialize};

pub use crate::control::{Action, Audit, Cutover, Upload, Version};
pub use crate::lifecycle::{CohortView, PluginView, Promoted, Pushed, ShadowReport, SlotView};
pub use crate::shadow::{Example, FieldDiff, Report};

/// `PUT /v1/plugins/{plugin}/fixtures`: `input.jsonl` and `expected.jsonl` as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixturesRequest {
    /// Input lines, as for `weir transform`.
    pub input: String,
    /// One expected outcome line per input line.
    pub expected: String,
}

/// The answer to storing fixtures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixturesStored {
    /// `name@version`.
    pub plugin: String,
    /// Always `stored`.
    pub fixtures: String,
}

/// `POST /v1/cohorts/{cohort}/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// The stored version, `name@version`.
    pub plugin: String,
}

/// `POST /v1/cohorts/{cohort}/shadow`: exactly one of `messages` and `for_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRequest {
    /// The stored version to run beside the live one, `name@version`.
    pub plugin: String,
    /// Compare this many messages.
    #[serde(default)]
    pub messages: Option<u64>,
    /// Compare for this long, ms.
    #[serde(default)]
    pub for_ms: Option<u64>,
}

/// Every refusal's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was refused and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SPEC: &str = include_str!("../openapi.json");

    /// Where `sample` (a serialised answer or request) and the spec's `schema` disagree:
    /// properties the spec names that the type does not write, and the other way round.
    fn mismatches(spec: &Value, schema: &Value, sample: &Value, at: &str, out: &mut Vec<String>) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                &spec["components"]["schemas"][name]
            }
            None => schema,
        };
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let Some(obj) = sample.as_object() else {
                out.push(format!(
                    "{at}: the spec has an object, the type writes {sample}"
                ));
                return;
            };
            for k in props.keys().filter(|k| !obj.contains_key(*k)) {
                out.push(format!("{at}.{k}: in the spec, not written by the type"));
            }
            for (k, v) in obj {
                match props.get(k) {
                    Some(s) => mismatches(spec, s, v, &format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k}: written by the type, not in the spec")),
                }
            }
        } else if let (Some(items), Some(list)) = (schema.get("items"), sample.as_array()) {
            for (i, v) in list.iter().enumerate() {
                mismatches(spec, items, v, &format!("{at}[{i}]"), out);
            }
        }
    }

    fn version(v: &str) -> Version {
        Version {
            name: "thermostat".into(),
            version: v.into(),
            sha256: format!("sha-{v}"),
        }
    }

    fn cutover() -> Cutover {
        Cutover {
            process: "weir-1".into(),
            at_ms: 2,
            first_topic: "plant/1/thermostat/t-1".into(),
        }
    }

    /// Every answer and request, each with every optional part present.
    fn samples() -> Vec<(&'static str, Value)> {
        let report = Report {
            messages: 3,
            identical: 1,
            different: 1,
            candidate_rejected: 1,
            live_rejected: 0,
            candidate_failed: 0,
            skipped: 0,
            complete: true,
            examples: vec![Example {
                topic: "plant/1/thermostat/t-1".into(),
                live: json!({"outcome": "emit"}),
                candidate: json!({"outcome": "emit"}),
                diff: vec![FieldDiff {
                    field: "temperature_c".into(),
                    live: Some(json!(21.0)),
                    candidate: Some(json!(69.8)),
                }],
            }],
        };
        vec![
            (
                "Pushed",
                json_of(&Pushed {
                    plugin: "thermostat@1.1.0".into(),
                    sha256: "sha".into(),
                    size: 1,
                    new: true,
                }),
            ),
            (
                "Plugin",
                json_of(&PluginView {
                    upload: Upload {
                        plugin: version("1.1.0"),
                        size: 1,
                        schema: "{}".into(),
                        at_ms: 1,
                        by: "ops".into(),
                    },
                    cohorts: vec!["thermostats".into()],
                }),
            ),
            (
                "Cohort",
                json_of(&CohortView {
                    cohort: "thermostats".into(),
                    plugin: version("1.0.0"),
                    since_ms: Some(1),
                    by: Some("ops".into()),
                    output_topic: "telemetry.thermostat".into(),
                    group: "default".into(),
                    slots: Some(vec![SlotView {
                        slot: 0,
                        process: "weir-1".into(),
                        here: true,
                    }]),
                }),
            ),
            (
                "Promoted",
                json_of(&Promoted {
                    cohort: "thermostats".into(),
                    from: version("1.0.0"),
                    to: version("1.1.0"),
                    gate_ms: 1,
                    swap_ms: 2,
                    cutover: Some(cutover()),
                }),
            ),
            (
                "Audit",
                json_of(&Audit {
                    cohort: Some("thermostats".into()),
                    action: Action::Promote,
                    plugin: "thermostat@1.1.0".into(),
                    old_sha256: Some("sha-1.0.0".into()),
                    new_sha256: "sha-1.1.0".into(),
                    at_ms: 1,
                    by: "ops".into(),
                    cutover: Some(cutover()),
                    signer: Some("ops-key".into()),
                }),
            ),
            (
                "ShadowReport",
                json_of(&ShadowReport {
                    cohort: "thermostats".into(),
                    live: version("1.0.0"),
                    candidate: version("1.1.0"),
                    report,
                }),
            ),
            (
                "FixturesStored",
                json_of(&FixturesStored {
                    plugin: "thermostat@1.1.0".into(),
                    fixtures: "stored".into(),
                }),
            ),
            ("Error", json_of(&ApiError { error: "no".into() })),
        ]
    }

    fn json_of<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).expect("serialisable")
    }

    fn request_schema<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
        &spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    }

    #[test]
    fn openapi_describes_exactly_what_server_and_client_exchange() {
        let spec: Value = serde_json::from_str(SPEC).expect("openapi.json is JSON");
        let mut out = Vec::new();
        for (name, sample) in samples() {
            let schema = &spec["components"]["schemas"][name];
            assert!(schema.is_object(), "openapi.json has no schema {name}");
            mismatches(&spec, schema, &sample, name, &mut out);
        }
        let requests = [
            (
                "/v1/plugins/{plugin}/fixtures",
                "put",
                serde_json::to_value(FixturesRequest {
                    input: "{}".into(),
                    expected: "{}".into(),
                }),
            ),
            (
                "/v1/cohorts/{cohort}/promote",
                "post",
                serde_json::to_value(PromoteRequest {
                    plugin: "thermostat@1.1.0".into(),
                }),
            ),
            (
                "/v1/cohorts/{cohort}/shadow",
                "post",
                serde_json::to_value(ShadowRequest {
                    plugin: "thermostat@1.1.0".into(),
                    messages: Some(10),
                    for_ms: Some(1000),
                }),
            ),
        ];
        for (path, method, sample) in requests {
            let schema = request_schema(&spec, path, method);
            assert!(
                schema.is_object(),
                "openapi.json has no request body for {method} {path}"
            );
            mismatches(
                &spec,
                schema,
                &sample.unwrap(),
                &format!("{method} {path}"),
                &mut out,
            );
        }
        assert!(
            out.is_empty(),
            "openapi.json and the API's types differ:\n{}",
            out.join("\n")
        );
    }

    #[test]
    fn the_check_finds_a_field_the_spec_does_not_name() {
        let spec = json!({"components": {"schemas": {"V": {"properties": {"a": {}}}}}});
        let mut out = Vec::new();
        let schema = json!({"$ref": "#/components/schemas/V"});
        mismatches(&spec, &schema, &json!({"a": 1, "b": 2}), "V", &mut out);
        mismatches(&spec, &schema, &json!({}), "W", &mut out);
        assert_eq!(
            out,
            vec![
                "V.b: written by the type, not in the spec".to_owned(),
                "W.a: in the spec, not written by the type".to_owned()
            ]
        );
    }

    #[test]
    fn answers_read_back_as_the_types_the_server_wrote() {
        for (name, sample) in samples() {
            let back = match name {
                "Pushed" => serde_json::from_value::<Pushed>(sample.clone()).map(|v| json_of(&v)),
                "Plugin" => {
                    serde_json::from_value::<PluginView>(sample.clone()).map(|v| json_of(&v))
                }
                "Cohort" => {
                    serde_json::from_value::<CohortView>(sample.clone()).map(|v| json_of(&v))
                }
                "Promoted" => {
                    serde_json::from_value::<Promoted>(sample.clone()).map(|v| json_of(&v))
                }
                "Audit" => serde_json::from_value::<Audit>(sample.clone()).map(|v| json_of(&v)),
                "ShadowReport" => {
                    serde_json::from_value::<ShadowReport>(sample.clone()).map(|v| json_of(&v))
                }
                "FixturesStored" => {
                    serde_json::from_value::<FixturesStored>(sample.clone()).map(|v| json_of(&v))
                }
                _ => serde_json::from_value::<ApiError>(sample.clone()).map(|v| json_of(&v)),
            };
            assert_eq!(back.expect(name), sample, "{name}");
        }
    }
}
