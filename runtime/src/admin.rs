//! The admin listener (`[admin] listen`, default 127.0.0.1:9900): `/metrics` (OpenMetrics
//! text, which Prometheus scrapes), `/healthz` (the process is alive) and `/readyz` (MQTT
//! connected and subscribed, Kafka reachable, no write stuck; otherwise 503 and the
//! reasons). Scripts and tests wait on `/readyz`.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

/// The admin routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Bind the admin address; the error names the address and the fix.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("admin.listen: cannot listen on {addr}: {e}; pick a free address (or 127.0.0.1:0 for any port)")
    })
}

/// Serve until the task is dropped.
pub fn spawn(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("admin listening on http://{addr}");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(metrics)).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    })
}
