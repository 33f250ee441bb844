//! A small client for Confluent-API schema registries: register (or look up) a plugin's
//! schema under the cohort's subject and fetch schemas by id for decoding.

use crate::config::SubjectStrategy;
use serde_json::{Value, json};
use std::time::Duration;

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryClientError {
    /// The registry could not be reached.
    #[error("schema registry {url} is unreachable: {reason}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The registry refused the request.
    #[error("schema registry refused {what}: HTTP {status}, error_code {code}: {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// HTTP status.
        status: u16,
        /// Confluent error code.
        code: i64,
        /// Its message.
        message: String,
    },
}

impl RegistryClientError {
    /// Worth retrying (the registry is down or overloaded), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryClientError::Unreachable { .. } => true,
            RegistryClientError::Refused { status, .. } => *status >= 500,
        }
    }
}

/// The subject a cohort's records are registered under.
pub fn subject(strategy: SubjectStrategy, topic: &str, record_name: &str) -> String {
    match strategy {
        SubjectStrategy::Topic => format!("{topic}-value"),
        SubjectStrategy::Record => record_name.to_owned(),
        SubjectStrategy::TopicRecord => format!("{topic}-{record_name}"),
    }
}

/// The full name of a record schema (namespace.name), for the record strategies.
pub fn record_full_name(schema: &str) -> Option<String> {
    let v: Value = serde_json::from_str(schema).ok()?;
    let name = v.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_owned());
    }
    Some(match v.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    })
}

/// A registry client.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    /// The `Authorization` header value, when the registry wants one.
    authorization: Option<String>,
}

impl RegistryClient {
    /// A client for the registry at `url`.
    pub fn new(url: &str) -> Self {
        RegistryClient {
            base: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            authorization: None,
        }
    }

    /// A client for the `[registry]` table: its URL and credential.
    pub fn for_config(config: &crate::config::RegistryConfig) -> Self {
        RegistryClient {
            authorization: config.credential.as_ref().map(|c| c.header_value()),
            ..RegistryClient::new(&config.url)
        }
    }

    async fn call(
        &self,
        what: String,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, RegistryClientError> {
        let req = match &self.authorization {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        };
        let resp = req
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| RegistryClientError::Unreachable {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 300 {
            return Err(RegistryClientError::Refused {
                what,
                status,
                code: body["error_code"].as_i64().unwrap_or(0),
                message: body["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(body)
    }

    /// Register `schema` under `subject` (or, without `register`, look it up) → its id.
    pub async fn schema_id(
        &self,
        subject: &str,
        schema: &str,
        register: bool,
    ) -> Result<u32, RegistryClientError> {
        let enc = urlencode(subject);
        let (what, url) = if register {
            (
                format!("registering the schema under subject {subject:?}"),
                format!("{}/subjects/{enc}/versions", self.base),
            )
        } else {
            (
                format!(
                    "looking up the schema under subject {subject:?} (auto_register is off: register it first)"
                ),
                format!("{}/subjects/{enc}", self.base),
            )
        };
        let body = self
            .call(
                what.clone(),
                self.http
                    .post(url)
                    .body(json!({"schema": schema}).to_string()),
            )
            .await?;
        body["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryClientError::Refused {
                what,
                status: 200,
                code: 0,
                message: format!("no id in the answer: {body}"),
            })
    }

    /// The schema with global id `id`.
    /// Would `schema` be accepted under `subject` at the subject's compatibility level?
    /// `Ok(Err(reasons))` when the registry says no; a subject with no version accepts
    /// anything.
    pub async fn check_compatible(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Result<(), Vec<String>>, RegistryClientError> {
        let url = format!(
            "{}/compatibility/subjects/{}/versions/latest?verbose=true",
            self.base,
            urlencode(subject)
        );
        let answer = self
            .call(
                format!("checking the schema's compatibility under subject {subject:?}"),
                self.http
                    .post(url)
                    .body(json!({"schema": schema}).to_string()),
            )
            .await;
        let body = match answer {
            Ok(body) => body,
            Err(RegistryClientError::Refused { code: 40401, .. }) => return Ok(Ok(())),
            Err(e) => return Err(e),
        };
        if body["is_compatible"].as_bool() == Some(true) {
            return Ok(Ok(()));
        }
        let reasons = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Err(reasons))
    }

    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryClientError> {
        let body = self
            .call(
                format!("fetching schema {id}"),
                self.http.get(format!("{}/schemas/ids/{id}", self.base)),
            )
            .await?;
        Ok(body["schema"].as_str().unwrap_or_default().to_owned())
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_strategies() {
        assert_eq!(subject(SubjectStrategy::Topic, "t", "a.R"), "t-value");
        assert_eq!(subject(SubjectStrategy::Record, "t", "a.R"), "a.R");
        assert_eq!(subject(SubjectStrategy::TopicRecord, "t", "a.R"), "t-a.R");
        assert_eq!(
            record_full_name(r#"{"type":"record","name":"R","namespace":"a.b"}"#).as_deref(),
            Some("a.b.R")
        );
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
