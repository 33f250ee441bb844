//! The admin API's client, behind `weir plugin push|list|promote|rollback|history` and
//! `weir cohort list`.

use crate::admin::api::{
    ApiError, Audit, CohortView, FixturesRequest, FixturesStored, PluginView, PromoteRequest,
    Promoted, Pushed, ShadowReport, ShadowRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Errors talking to the admin API; each is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API could not be reached.
    #[error(
        "cannot reach the weir admin API at {url}: {reason}; is `weir run` up, and is --admin (WEIR_ADMIN_URL) its [admin] listen address?"
    )]
    Unreachable {
        /// The base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// `--admin-ca` cannot be used.
    #[error("--admin-ca (WEIR_ADMIN_CA) {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The API refused the request.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's reason.
        message: String,
    },
    /// The answer is not what this version of weir expects (a server of another version?).
    #[error(
        "the admin API at {url} answered {path} with something unexpected: {reason}; are the CLI and the server the same version of weir?"
    )]
    Unexpected {
        /// The base URL.
        url: String,
        /// The request's path.
        path: String,
        /// What did not fit.
        reason: String,
    },
}

/// A client for one weir process's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for `base` (`http://host:port`, or `https://` when the server has
    /// `[admin.tls]`); `token` is the bearer secret, or `NAME:SECRET` as `WEIR_ADMIN_TOKEN`
    /// holds it on the server; `ca` a PEM file of the CA that issued the server's
    /// certificate, when the system does not trust it.
    pub fn new(
        base: &str,
        token: Option<&str>,
        ca: Option<&std::path::Path>,
    ) -> Result<AdminClient, ClientError> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(660));
        if let Some(path) = ca {
            let err = |reason: String| ClientError::Ca {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| err(format!("not a PEM certificate bundle: {e}")))?;
            if certs.is_empty() {
                return Err(err("holds no PEM certificate".into()));
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(|t| t.split_once(':').map_or(t, |(_, secret)| secret).to_owned()),
            http: http.build().map_err(|e| ClientError::Unreachable {
                url: base.to_owned(),
                reason: e.to_string(),
            })?,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((bytes, content_type)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status >= 300 {
            let message = serde_json::from_str::<ApiError>(&text).map_or(text, |e| e.error);
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Unexpected {
            url: self.base.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A JSON request body.
    fn json(body: &impl Serialize) -> Option<(Vec<u8>, &'static str)> {
        let bytes = serde_json::to_vec(body).expect("request bodies serialise");
        Some((bytes, "application/json"))
    }

    /// Upload a component.
    pub async fn push(&self, bytes: Vec<u8>) -> Result<Pushed, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/v1/plugins",
            Some((bytes, "application/wasm")),
        )
        .await
    }

    /// Store fixtures (`input.jsonl`, `expected.jsonl` contents) for `plugin`.
    pub async fn put_fixtures(
        &self,
        plugin: &str,
        input: String,
        expected: String,
    ) -> Result<FixturesStored, ClientError> {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/plugins/{}/fixtures", path_segment(plugin)),
            Self::json(&FixturesRequest { input, expected }),
        )
        .await
    }

    /// Stored versions.
    pub async fn plugins(&self) -> Result<Vec<PluginView>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/plugins", None).await
    }

    /// Cohorts and their pins.
    pub async fn cohorts(&self) -> Result<Vec<CohortView>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/cohorts", None).await
    }

    /// Promote `plugin` (`name@version`) to `cohort`.
    pub async fn promote(&self, cohort: &str, plugin: &str) -> Result<Promoted, ClientError> {
        let body = PromoteRequest {
            plugin: plugin.to_owned(),
        };
        self.call(
            reqwest::Method::POST,
            &format!("/v1/cohorts/{}/promote", path_segment(cohort)),
            Self::json(&body),
        )
        .await
    }

    /// Roll `cohort` back to its previous pin.
    pub async fn rollback(&self, cohort: &str) -> Result<Promoted, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/cohorts/{}/rollback", path_segment(cohort)),
            Some((b"{}".to_vec(), "application/json")),
        )
        .await
    }

    /// Shadow `plugin` beside `cohort`'s live version: `messages` or `for_ms`.
    pub async fn shadow(
        &self,
        cohort: &str,
        plugin: &str,
        messages: Option<u64>,
        for_ms: Option<u64>,
    ) -> Result<ShadowReport, ClientError> {
        let body = ShadowRequest {
            plugin: plugin.to_owned(),
            messages,
            for_ms,
        };
        self.call(
            reqwest::Method::POST,
            &format!("/v1/cohorts/{}/shadow", path_segment(cohort)),
            Self::json(&body),
        )
        .await
    }

    /// `cohort`'s audit entries.
    pub async fn history(&self, cohort: &str) -> Result<Vec<Audit>, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/cohorts/{}/history", path_segment(cohort)),
            None,
        )
        .await
    }
}

/// Percent-encode a path segment.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
