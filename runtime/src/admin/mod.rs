//! The admin listener (`[admin] listen`, default 127.0.0.1:9900).
//!
//! - `/metrics` (OpenMetrics text, which Prometheus scrapes), `/healthz` (the process is
//!   alive), `/readyz` (MQTT connected and subscribed, Kafka reachable, no write stuck;
//!   otherwise 503 and the reasons). Scripts and tests wait on `/readyz`.
//! - `/v1/...`: the plugin lifecycle as JSON over HTTP (push, list, promote, rollback,
//!   history), described by `/v1/openapi.json`. Every `/v1` request but the description
//!   needs `Authorization: Bearer <token>` when tokens are configured (`WEIR_ADMIN_TOKEN`
//!   or `admin.token_file`, read again at each request); the token's name is recorded in the
//!   audit trail. Errors are `{"error": "..."}` with the reason and the fix.
//! - `/`: the status page ([`crate::status`]).
//! - With `[admin.tls]` the listener speaks HTTPS only.

pub mod api;
pub mod listener;

use crate::config::{Admin, Secret, TOKEN_FILE, Tls, read_token_file};
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::metrics::Metrics;
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
struct App {
    metrics: Arc<Metrics>,
    lifecycle: Option<Arc<Lifecycle>>,
    tokens: Arc<Tokens>,
    rates: Arc<crate::status::Rates>,
}

/// The `/v1` API's bearer tokens as `(name, secret)`: fixed when weir starts, or followed
/// in `admin.token_file`, which is read again at each request that carries a token, so
/// that a rotation needs no restart (the API is for operators, not for traffic; the file
/// is small). Requests without a token are refused without reading it.
pub struct Tokens(Source);

/// Where the tokens come from.
enum Source {
    /// From `admin.token` or `WEIR_ADMIN_TOKEN`; none: the API is open (loopback only).
    Fixed(Vec<(String, String)>),
    /// From `admin.token_file`.
    File {
        path: std::path::PathBuf,
        /// Held while the file is read, so that reads are taken in one at a time, in order.
        current: tokio::sync::Mutex<Current>,
    },
}

/// A token file's tokens in force and the text they come from.
struct Current {
    tokens: Vec<(String, String)>,
    text: Secret,
    /// A problem with the file already logged, so that it is logged once.
    complained: Option<String>,
}

impl Tokens {
    /// `admin`'s tokens. An error is `(key, problem)`: a token file that cannot be read, or
    /// holds no token or a malformed one, stops start-up.
    pub fn new(admin: &Admin) -> Result<Tokens, (&'static str, String)> {
        let Some(path) = &admin.token_file else {
            let tokens = admin.tokens().map_err(|e| ("admin.token", e))?;
            return Ok(Tokens(Source::Fixed(tokens)));
        };
        let (tokens, text) = read_token_file(path).map_err(|e| (TOKEN_FILE, e))?;
        Ok(Tokens(Source::File {
            path: path.clone(),
            current: tokio::sync::Mutex::new(Current {
                tokens,
                text,
                complained: None,
            }),
        }))
    }

    /// No token is configured: the API is open (the listener must be loopback).
    fn is_open(&self) -> bool {
        matches!(&self.0, Source::Fixed(tokens) if tokens.is_empty())
    }

    /// The name of the token `given` (a request's bearer token) is; `anonymous` when the
    /// API is open; `None` when it is refused.
    async fn caller(&self, given: Option<&str>) -> Option<String> {
        let find = |tokens: &[(String, String)], given: &str| {
            tokens
                .iter()
                .find(|(_, secret)| same(secret.as_bytes(), given.as_bytes()))
                .map(|(name, _)| name.clone())
        };
        match &self.0 {
            Source::Fixed(tokens) if tokens.is_empty() => Some("anonymous".to_owned()),
            Source::Fixed(tokens) => find(tokens, given?),
            Source::File { path, current } => {
                let given = given?;
                let mut current = current.lock().await;
                let file = path.clone();
                let read = tokio::task::spawn_blocking(move || read_token_file(&file))
                    .await
                    .unwrap_or_else(|e| Err(format!("reading it failed: {e}")));
                current.take(read);
                find(&current.tokens, given)
            }
        }
    }
}

impl Current {
    /// Take in what the file says now: new tokens if it changed; if it cannot be read or
    /// holds a bad token, the tokens in force stay, and that is logged once.
    fn take(&mut self, read: Result<(Vec<(String, String)>, Secret), String>) {
        match read {
            Ok((tokens, text)) => {
                if text != self.text {
                    tracing::info!(
                        tokens = tokens.len(),
                        "{TOKEN_FILE} changed: the admin API takes the tokens it holds now"
                    );
                    self.tokens = tokens;
                    self.text = text;
                }
                self.complained = None;
            }
            Err(problem) => {
                if self.complained.as_ref() != Some(&problem) {
                    tracing::warn!(
                        "{TOKEN_FILE}: {problem}; the admin API keeps the tokens read before"
                    );
                    self.complained = Some(problem);
                }
            }
        }
    }
}

/// The name of the token a request was authorised with.
#[derive(Clone)]
struct Caller(String);

/// The admin routes.
pub fn router(metrics: Arc<Metrics>, lifecycle: Option<Arc<Lifecycle>>, tokens: Tokens) -> Router {
    let app = App {
        metrics,
        lifecycle,
        tokens: Arc::new(tokens),
        rates: Arc::default(),
    };
    let api = Router::new()
        // A component (an interpreter's is ~18 MB) may be as large as the store takes.
        .route(
            "/v1/plugins",
            post(push)
                .layer(DefaultBodyLimit::max(
                    crate::control::MAX_COMPONENT_BYTES + (64 << 10),
                ))
                .get(plugins),
        )
        .route(
            "/v1/plugins/{plugin}/fixtures",
            axum::routing::put(put_fixtures),
        )
        .route("/v1/cohorts", get(cohorts))
        .route("/v1/cohorts/{cohort}/promote", post(promote))
        .route("/v1/cohorts/{cohort}/rollback", post(rollback))
        .route("/v1/cohorts/{cohort}/history", get(history))
        .route("/v1/cohorts/{cohort}/shadow", post(shadow))
        .layer(DefaultBodyLimit::max(4 << 20))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorise));
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/openapi.json", get(openapi))
        .merge(api)
        .layer(middleware::from_fn_with_state(app.clone(), loopback_host))
        .with_state(app)
}

/// With no token the API is open to whoever reaches the (loopback) listener, and a web
/// page can reach it too: its attacker points their own host name at 127.0.0.1 (DNS
/// rebinding), and the browser sends the page's requests there under that name. So an
/// open API answers only requests whose `Host` names a loopback address.
async fn loopback_host(State(app): State<App>, req: Request, next: Next) -> Response {
    if app.tokens.is_open()
        && let Some(host) = req.headers().get(header::HOST)
        && !host.to_str().is_ok_and(is_loopback_host)
    {
        return (
            StatusCode::FORBIDDEN,
            "this admin API has no token, so it answers only requests addressed to localhost or a loopback address (Host header); set WEIR_ADMIN_TOKEN or admin.token_file to reach it under another name\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// `localhost`, `127.0.0.1`, `[::1]`, ... with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn metrics_text(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

/// The status page (see [`crate::status`]).
async fn status_page(State(app): State<App>) -> impl IntoResponse {
    let (cohorts, changes, process) = match &app.lifecycle {
        Some(lc) => (
            lc.cohorts(),
            lc.recent_changes(10),
            lc.config().mqtt.client_id.clone(),
        ),
        None => (Vec::new(), Vec::new(), "weir".to_owned()),
    };
    let page = crate::status::Page {
        process: &process,
        not_ready: app.metrics.not_ready(),
        cohorts: &cohorts,
        changes: &changes,
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        app.rates.render(&page, &app.metrics.encode()),
    )
}

async fn ready(State(app): State<App>) -> impl IntoResponse {
    match app.metrics.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = api::ApiError {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

/// Constant-time comparison, so a wrong token's timing says nothing about the right one.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorise(State(app): State<App>, mut req: Request, next: Next) -> Response {
    // A change must say what it sends: a browser cannot send these types across origins
    // without a preflight, which this API never answers, so a web page cannot drive it.
    if req.method() != axum::http::Method::GET {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let kind = ct.split(';').next().unwrap_or_default().trim();
        if !matches!(
            kind,
            "application/json" | "application/wasm" | "application/octet-stream"
        ) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {ct:?}: send application/json (or application/wasm for a component)"
                ),
            );
        }
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = app.tokens.caller(given).await;
    match caller {
        Some(name) => {
            req.extensions_mut().insert(Caller(name));
            next.run(req).await
        }
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <token> with the secret of one of the server's tokens (WEIR_ADMIN_TOKEN or admin.token_file): weir plugin ... --token, or WEIR_ADMIN_TOKEN in the CLI's environment",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

fn no_pipeline() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this process runs no pipeline",
    )
}

fn refused(e: LifecycleError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.to_string())
}

async fn push(
    State(app): State<App>,
    Extension(Caller(by)): Extension<Caller>,
    body: Bytes,
) -> Response {
    let Some(lc) = app.lifecycle.clone() else {
        return no_pipeline();
    };
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "empty body: send the .wasm component's bytes (weir plugin push FILE.wasm)",
        );
    }
    let pushed = tokio::spawn(async move { lc.push(body.to_vec(), &by).await }).await;
    match pushed.unwrap_or_else(|e| Err(LifecycleError::Unavailable(e.to_string()))) {
        Ok(p) => (
            if p.new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            axum::Json(p),
        )
            .into_response(),
        Err(e) => refused(e),
    }
}

async fn put_fixtures(
    State(app): State<App>,
    Path(plugin): Path<String>,
    Extension(Caller(by)): Extension<Caller>,
    body: Bytes,
) -> Response {
    let Some(lc) = app.lifecycle.clone() else {
        return no_pipeline();
    };
    let Ok(api::FixturesRequest { input, expected }) = serde_json::from_slice(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"input": "<input.jsonl>", "expected": "<expected.jsonl>"}"#,
        );
    };
    let id = plugin.clone();
    let stored =
        tokio::spawn(async move { lc.put_fixtures(&id, input, expected, &by).await }).await;
    match stored.unwrap_or_else(|e| Err(LifecycleError::Unavailable(e.to_string()))) {
        Ok(()) => axum::Json(api::FixturesStored {
            plugin,
            fixtures: "stored".into(),
        })
        .into_response(),
        Err(e) => refused(e),
    }
}

async fn plugins(State(app): State<App>) -> Response {
    match &app.lifecycle {
        Some(lc) => axum::Json(lc.plugins()).into_response(),
        None => no_pipeline(),
    }
}

async fn cohorts(State(app): State<App>) -> Response {
    match &app.lifecycle {
        Some(lc) => {
            let mut cohorts = lc.cohorts();
            if lc.config().mqtt.slots.is_some() {
                for c in &mut cohorts {
                    let holders = app.metrics.group(&c.group).slot_holders();
                    c.slots = Some(
                        holders
                            .into_iter()
                            .map(|(slot, process)| crate::lifecycle::SlotView {
                                here: process == lc.process(),
                                slot,
                                process,
                            })
                            .collect(),
                    );
                }
            }
            axum::Json(cohorts).into_response()
        }
        None => no_pipeline(),
    }
}

async fn promote(
    State(app): State<App>,
    Path(cohort): Path<String>,
    Extension(Caller(by)): Extension<Caller>,
    body: Bytes,
) -> Response {
    let Some(lc) = app.lifecycle.clone() else {
        return no_pipeline();
    };
    let Ok(api::PromoteRequest { plugin }) = serde_json::from_slice(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"plugin": "NAME@VERSION"}"#,
        );
    };
    let promoted = tokio::spawn(async move { lc.promote(&cohort, &plugin, &by).await }).await;
    match promoted.unwrap_or_else(|e| Err(LifecycleError::Unavailable(e.to_string()))) {
        Ok(p) => axum::Json(p).into_response(),
        Err(e) => refused(e),
    }
}

async fn rollback(
    State(app): State<App>,
    Path(cohort): Path<String>,
    Extension(Caller(by)): Extension<Caller>,
) -> Response {
    let Some(lc) = app.lifecycle.clone() else {
        return no_pipeline();
    };
    let rolled = tokio::spawn(async move { lc.rollback(&cohort, &by).await }).await;
    match rolled.unwrap_or_else(|e| Err(LifecycleError::Unavailable(e.to_string()))) {
        Ok(p) => axum::Json(p).into_response(),
        Err(e) => refused(e),
    }
}

async fn shadow(State(app): State<App>, Path(cohort): Path<String>, body: Bytes) -> Response {
    let Some(lc) = app.lifecycle.clone() else {
        return no_pipeline();
    };
    let limit = match serde_json::from_slice::<api::ShadowRequest>(&body) {
        Ok(api::ShadowRequest {
            plugin,
            messages: Some(n),
            for_ms: None,
        }) if n > 0 => (plugin, crate::shadow::Limit::Messages(n)),
        Ok(api::ShadowRequest {
            plugin,
            messages: None,
            for_ms: Some(ms),
        }) if ms > 0 => (
            plugin,
            crate::shadow::Limit::For(std::time::Duration::from_millis(ms)),
        ),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                r#"the body must be {"plugin": "NAME@VERSION", "messages": N} or {"plugin": "NAME@VERSION", "for_ms": MS}"#,
            );
        }
    };
    let report = tokio::spawn(async move { lc.shadow(&cohort, &limit.0, limit.1).await }).await;
    match report.unwrap_or_else(|e| Err(LifecycleError::Unavailable(e.to_string()))) {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => refused(e),
    }
}

async fn history(State(app): State<App>, Path(cohort): Path<String>) -> Response {
    match app.lifecycle.as_ref().map(|lc| lc.history(&cohort)) {
        Some(Ok(h)) => axum::Json(h).into_response(),
        Some(Err(e)) => refused(e),
        None => no_pipeline(),
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}

/// The admin server cannot start: the key at fault and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be bound.
    #[error(
        "admin.listen: cannot listen on {addr}: {source}; pick a free address (or 127.0.0.1:0 for any port)"
    )]
    Bind {
        /// `admin.listen`.
        addr: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket has no address.
    #[error("admin.listen: {0}")]
    Address(#[source] std::io::Error),
    /// `[admin.tls]` without both files.
    #[error("admin.tls: set cert_file and key_file")]
    TlsIncomplete,
    /// A TLS file or setting cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::source::tls::TlsError),
}

/// Bind the admin address; the error names the address and the fix.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serve (HTTPS with `tls`) until the task is dropped; an error names the TLS file at fault.
pub fn spawn(
    listener: tokio::net::TcpListener,
    tls: Option<&Tls>,
    metrics: Arc<Metrics>,
    lifecycle: Option<Arc<Lifecycle>>,
    tokens: Tokens,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let app = router(metrics, lifecycle, tokens);
    let addr = listener.local_addr().map_err(ServeError::Address)?;
    let Some(tls) = tls else {
        tracing::info!("admin listening on http://{addr}");
        return Ok(tokio::spawn(async move {
            let (incoming, accepting) = listener::accept_tcp(listener);
            let mut accepting = AbortOnDrop(accepting);
            listener::serve(incoming, app).await;
            // Serving ends only once the accept loop ended: its panic is this task's.
            if let Err(e) = (&mut accepting.0).await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }));
    };
    let acceptor = server_tls(tls)?;
    tracing::info!("admin listening on https://{addr}");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    Ok(tokio::spawn(async move {
        // Handshakes run on tasks of their own: a slow or silent client holds up no one.
        // At most this many at once: connections that never handshake cannot use up the
        // process's file descriptors.
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let handshakes = tokio::spawn(async move {
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "admin: cannot accept a connection");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                #[cfg(debug_assertions)]
                crate::failpoint("admin-accept-panic");
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "admin: TLS handshake timed out"),
                    }
                });
            }
        });
        let mut handshakes = AbortOnDrop(handshakes);
        listener::serve(rx, app).await;
        // Serving ends only once every sender is gone: the handshake loop itself ended.
        // Its panic is this task's, for the supervisor to report.
        if let Err(e) = (&mut handshakes.0).await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }))
}

/// TLS handshakes in progress on the admin listener, at most.
const MAX_HANDSHAKES: usize = 64;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTPS acceptor of `[admin.tls]`.
fn server_tls(tls: &Tls) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use crate::source::tls::TlsError;
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Err(ServeError::TlsIncomplete);
    };
    let chain = crate::source::tls::read_certs(cert, "admin.tls.cert_file")?;
    let key_der = crate::source::tls::read_key(key, "admin.tls.key_file")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Refused {
            what: "TLS set-up".into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Refused {
            what: format!(
                "admin.tls.key_file: {} does not fit admin.tls.cert_file {}",
                key.display(),
                cert.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn app(tokens: Vec<(String, String)>) -> Router {
        router(
            Arc::new(Metrics::new()),
            None,
            Tokens(Source::Fixed(tokens)),
        )
    }

    async fn status(app: Router, path: &str, host: &str, token: Option<&str>) -> StatusCode {
        let mut req = Request::get(path).header(header::HOST, host);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        app.oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn an_open_api_answers_only_requests_addressed_to_loopback() {
        for host in ["localhost:9900", "127.0.0.1", "[::1]:9900", "LOCALHOST"] {
            assert_eq!(
                status(app(vec![]), "/healthz", host, None).await,
                StatusCode::OK,
                "{host}"
            );
        }
        for host in [
            "attacker.example:9900",
            "127.0.0.1.attacker.example",
            "10.0.0.1:9900",
        ] {
            assert_eq!(
                status(app(vec![]), "/v1/cohorts", host, None).await,
                StatusCode::FORBIDDEN,
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn with_tokens_any_host_is_served_and_v1_needs_a_token() {
        let tokens = vec![("ops".to_owned(), "s3cret".to_owned())];
        let host = "weir.internal:9900";
        assert_eq!(
            status(app(tokens.clone()), "/healthz", host, None).await,
            StatusCode::OK
        );
        assert_eq!(
            status(app(tokens.clone()), "/v1/cohorts", host, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(app(tokens.clone()), "/v1/cohorts", host, Some("wrong")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_ne!(
            status(app(tokens), "/v1/cohorts", host, Some("s3cret")).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
