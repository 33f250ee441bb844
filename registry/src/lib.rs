//! A Confluent-compatible schema registry for Avro: the REST API of Confluent Schema
//! Registry (subjects, versions, global ids, compatibility levels, soft/permanent deletes,
//! Confluent error codes) over durable append-only storage.
//!
//! weir ships it so that a first run needs nothing installed; in production weir talks to any
//! Confluent-API registry (Confluent, Karapace, Apicurio, Redpanda) the same way.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod compatibility;
pub mod registry;
pub mod storage;

pub use api::{ApiConfig, router};
pub use registry::{Compat, Registry, RegistryError};

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Open the registry in `data_dir` and serve it on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    data_dir: &Path,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let registry = Arc::new(Registry::open(data_dir)?);
    let addr = listener.local_addr().map_err(ServeError::Io)?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "schema registry listening");
    axum::serve(listener, router(registry, config))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Io)
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening storage failed.
    #[error(transparent)]
    Storage(#[from] RegistryError),
    /// Socket error.
    #[error("registry server: {0}")]
    Io(std::io::Error),
}
