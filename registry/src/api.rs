//! The Confluent Schema Registry REST API (Avro), over [`Registry`].

use crate::auth::Credentials;
use crate::registry::{Registry, RegistryError, VersionRef};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Confluent's media type; plain JSON is accepted and understood too.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Server settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Requests served at once; more wait. Parsing a schema costs a multiple of its size
    /// in memory, so this times the body limit bounds the registry's memory. A request
    /// takes its place only once its body has arrived, so slow senders cannot hold them.
    pub max_concurrent: usize,
    /// Longest a client may take to send a request body (408 beyond).
    pub body_timeout: Duration,
    /// Who may call the API; `None`: anyone who can reach the listener. `/health` is
    /// always open, for probes.
    pub credentials: Option<Credentials>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 4 << 20,
            max_concurrent: 8,
            body_timeout: Duration::from_secs(10),
            credentials: None,
        }
    }
}

#[derive(Clone)]
struct App {
    registry: Arc<Registry>,
    config: ApiConfig,
}

/// An API error: HTTP status + Confluent body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let code = e.code();
        let status = match code {
            409 => StatusCode::CONFLICT,
            40400..=40499 => StatusCode::NOT_FOUND,
            42200..=42299 => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "registry request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// A registered version, as Confluent shows it.
fn version_json(v: crate::registry::VersionInfo) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema})
}

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, body))
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A schema in a request body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    /// Only counted: `IgnoredAny` is zero-sized, so a body of a million references costs
    /// no memory (a `Vec<Value>` here amplified a body of small numbers ~17×).
    #[serde(default)]
    references: Vec<serde::de::IgnoredAny>,
}

/// Check the media type and size, then parse the JSON body.
fn parse_body<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T> {
    // Required: a browser may send a cross-origin POST without asking first only when its
    // type is missing or one of the form and text types, so those are refused.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|ct| {
            ct.to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let accepted = [
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json",
        "application/json",
        "application/octet-stream",
    ];
    if !accepted.contains(&ct.as_str()) {
        let given = if ct.is_empty() {
            "no Content-Type".to_owned()
        } else {
            format!("media type {ct:?}")
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!("Unsupported {given}; send {CONTENT_TYPE} or application/json"),
        ));
    }
    if body.len() > app.config.max_body_bytes {
        return Err(too_large(app));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("Malformed request body: {e}"),
        )
    })
}

fn too_large(app: &App) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        413,
        format!(
            "Request body is larger than {} bytes",
            app.config.max_body_bytes
        ),
    )
}

fn schema_text(b: SchemaBody) -> Result<String> {
    match b.schema_type.as_deref() {
        None => {}
        Some(t) if t.eq_ignore_ascii_case("AVRO") => {}
        Some(t) => {
            return Err(RegistryError::InvalidSchema(format!(
                "of type {t}: this registry stores AVRO schemas only"
            ))
            .into());
        }
    }
    if !b.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "with references: schema references are not supported".into(),
        )
        .into());
    }
    Ok(b.schema)
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Run a writing operation off the async workers (it fsyncs).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, RegistryError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                50001,
                format!("internal error: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// The router for `registry`.
pub fn router(registry: Arc<Registry>, config: ApiConfig) -> Router {
    let limit = config.max_body_bytes;
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.max(1)));
    let app = App { registry, config };
    let app_config = app.config.clone();
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/health", get(|| async { ok(json!({"status": "UP"})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_schema_raw))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compat),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                405,
                "HTTP 405 Method Not Allowed",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            Gate {
                permits,
                credentials: app_config.credentials.map(Arc::new),
                max_body_bytes: limit,
                body_timeout: app_config.body_timeout,
            },
            gate,
        ))
        // The gate has read the body under the limit (413 beyond it, in Confluent's form);
        // this lifts axum's own default limit for the handlers' `Bytes` to match.
        .layer(axum::extract::DefaultBodyLimit::max(
            limit.saturating_add(1),
        ))
        .with_state(app)
}

/// What every request passes before its handler runs.
#[derive(Clone)]
struct Gate {
    permits: Arc<tokio::sync::Semaphore>,
    credentials: Option<Arc<Credentials>>,
    max_body_bytes: usize,
    body_timeout: Duration,
}

/// Authenticate, read the body (bounded in size and time), then wait for a permit: a
/// client that sends slowly or not at all holds a connection, never a permit.
async fn gate(
    State(gate): State<Gate>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(credentials) = &gate.credentials
        && req.uri().path() != "/health"
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !credentials.allow(given) {
            let mut denied = ApiError::new(
                StatusCode::UNAUTHORIZED,
                401,
                "Unauthorized: send the registry's basic auth or bearer token in Authorization",
            )
            .into_response();
            denied.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"weir-registry\""),
            );
            return denied;
        }
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, gate.max_body_bytes.saturating_add(1));
    let body = match tokio::time::timeout(gate.body_timeout, read).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                408,
                format!(
                    "The request body did not arrive within {} s",
                    gate.body_timeout.as_secs_f64()
                ),
            )
            .into_response();
        }
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                413,
                format!(
                    "Request body is larger than {} bytes, or was cut off",
                    gate.max_body_bytes
                ),
            )
            .into_response();
        }
        Ok(Ok(body)) => body,
    };
    let Ok(_permit) = gate.permits.acquire_owned().await else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, 503, "shutting down")
            .into_response();
    };
    next.run(axum::extract::Request::from_parts(parts, Body::from(body)))
        .await
}

async fn list_subjects(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    ok(json!(app.registry.subjects(flag(&q, "deleted"))))
}

async fn register(
    State(app): State<App>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let schema = schema_text(parse_body(&app, &headers, &body)?)?;
    let registry = app.registry.clone();
    let id = blocking(move || registry.register(&subject, &schema)).await?;
    ok(json!({"id": id}))
}

async fn lookup(
    State(app): State<App>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let schema = schema_text(parse_body(&app, &headers, &body)?)?;
    let v = app.registry.lookup(&subject, &schema)?;
    ok(version_json(v))
}

async fn list_versions(
    State(app): State<App>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    ok(json!(app.registry.versions(&subject, flag(&q, "deleted"))?))
}

async fn get_version(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    let v = app
        .registry
        .version(&subject, VersionRef::parse(&version)?)?;
    ok(version_json(v))
}

async fn get_version_schema(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    let v = app
        .registry
        .version(&subject, VersionRef::parse(&version)?)?;
    Ok(raw_schema(v.schema))
}

fn raw_schema(schema: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Body::from(schema),
    )
        .into_response()
}

fn parse_id(id: &str) -> Result<u32> {
    id.parse()
        .map_err(|_| RegistryError::SchemaNotFound(id.to_owned()).into())
}

async fn get_schema(State(app): State<App>, Path(id): Path<String>) -> Result<Response> {
    ok(json!({"schema": app.registry.schema(parse_id(&id)?)?}))
}

async fn get_schema_raw(State(app): State<App>, Path(id): Path<String>) -> Result<Response> {
    Ok(raw_schema(app.registry.schema(parse_id(&id)?)?))
}

async fn get_schema_versions(State(app): State<App>, Path(id): Path<String>) -> Result<Response> {
    let versions: Vec<Value> = app
        .registry
        .schema_versions(parse_id(&id)?)?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok(json!(versions))
}

async fn delete_subject(
    State(app): State<App>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let permanent = flag(&q, "permanent");
    let registry = app.registry.clone();
    let deleted = blocking(move || registry.delete_subject(&subject, permanent)).await?;
    ok(json!(deleted))
}

async fn delete_version(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let v = VersionRef::parse(&version)?;
    let permanent = flag(&q, "permanent");
    let registry = app.registry.clone();
    let deleted = blocking(move || registry.delete_version(&subject, v, permanent)).await?;
    ok(json!(deleted))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

async fn get_global_config(State(app): State<App>) -> Result<Response> {
    ok(json!({"compatibilityLevel": app.registry.global_compat().name()}))
}

async fn put_global_config(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let b: ConfigBody = parse_body(&app, &headers, &body)?;
    let registry = app.registry.clone();
    let level = blocking(move || registry.set_compat(None, &b.compatibility)).await?;
    ok(json!({"compatibility": level.name()}))
}

async fn get_subject_config(
    State(app): State<App>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    match app.registry.subject_compat(&subject) {
        Some(level) => ok(json!({"compatibilityLevel": level.name()})),
        None if flag(&q, "defaultToGlobal") => {
            ok(json!({"compatibilityLevel": app.registry.global_compat().name()}))
        }
        None => Err(RegistryError::SubjectCompatNotConfigured(subject).into()),
    }
}

async fn put_subject_config(
    State(app): State<App>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let b: ConfigBody = parse_body(&app, &headers, &body)?;
    let registry = app.registry.clone();
    let level = blocking(move || registry.set_compat(Some(&subject), &b.compatibility)).await?;
    ok(json!({"compatibility": level.name()}))
}

async fn delete_subject_config(
    State(app): State<App>,
    Path(subject): Path<String>,
) -> Result<Response> {
    let registry = app.registry.clone();
    let old = blocking(move || registry.delete_subject_compat(&subject)).await?;
    ok(json!({"compatibilityLevel": old.name()}))
}

async fn check_compat(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let v = VersionRef::parse(&version)?;
    let schema = schema_text(parse_body(&app, &headers, &body)?)?;
    let registry = app.registry.clone();
    // A check may be costly (up to its bound): off the async workers, like a register.
    let messages = blocking(move || registry.check_compat(&subject, v, &schema)).await?;
    if flag(&q, "verbose") {
        ok(json!({"is_compatible": messages.is_empty(), "messages": messages}))
    } else {
        ok(json!({"is_compatible": messages.is_empty()}))
    }
}
