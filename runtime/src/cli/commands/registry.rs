//! `weir registry`: the built-in Confluent-compatible schema registry.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Serve the Confluent Schema Registry REST API (Avro) with durable storage.
    ///
    /// Any Confluent client works against it: point `schema.registry.url` at
    /// http://ADDR. Every write is fsynced to an append-only log in --data-dir before it is
    /// acknowledged; a restart restores subjects, versions, ids, config and deletions.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "WEIR_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
        listen: String,
        /// Directory for the registry's log (created if missing).
        #[arg(
            long,
            env = "WEIR_REGISTRY_DATA_DIR",
            default_value = "./weir-registry-data"
        )]
        data_dir: PathBuf,
        /// Largest request body accepted, bytes.
        #[arg(long, env = "WEIR_REGISTRY_MAX_BODY", default_value_t = 4 << 20)]
        max_body_bytes: usize,
        /// Requests served at once (more wait); with the body limit, this bounds memory.
        #[arg(long, env = "WEIR_REGISTRY_MAX_CONCURRENT", default_value_t = 8)]
        max_concurrent: usize,
        /// Who may call the registry: a file of lines `basic USER:PASSWORD` or `bearer
        /// TOKEN` (what Confluent clients send as basic.auth.user.info or
        /// bearer.auth.token). Without it anyone who reaches the listener may register.
        #[arg(long, env = "WEIR_REGISTRY_SERVE_CREDENTIALS_FILE")]
        credentials_file: Option<PathBuf>,
    },
}

pub fn execute(command: RegistryCommand) -> Result<ExitCode> {
    let RegistryCommand::Serve {
        listen,
        data_dir,
        max_body_bytes,
        max_concurrent,
        credentials_file,
    } = command;
    let credentials = credentials_file
        .as_deref()
        .map(weir_registry::auth::Credentials::read)
        .transpose()
        .context("--credentials-file")?;
    let config = weir_registry::ApiConfig {
        max_body_bytes,
        max_concurrent,
        credentials,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!(
            "schema registry listening on http://{}",
            listener.local_addr()?
        );
        weir_registry::serve(listener, &data_dir, config, crate::signals::first())
            .await
            .with_context(|| format!("registry with data dir {}", data_dir.display()))
    })?;
    Ok(ExitCode::SUCCESS)
}
