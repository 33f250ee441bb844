//! `weir run`: the pipeline, until a signal or a failure stops it.

use crate::engine::EngineArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use weir::pipeline::Stopped;

#[derive(Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, env = "WEIR_CONFIG", default_value = "weir.toml")]
    config: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs until stopped, then exits the process with the code `weir run --help` lists.
pub fn execute(args: RunArgs) -> Result<std::convert::Infallible> {
    let file = args.config.display().to_string();
    let cfg = weir::config::Config::load(&args.config)?;
    // Precompiled plugins live beside the store unless --cache-dir says otherwise.
    let cache = args
        .engine
        .cache_or(Some(cfg.plugins.store.join("compiled")));
    let limits = args.engine.limits();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let stopped = rt.block_on(async move {
        let signals = crate::signals::every()?;
        let prepared = weir::pipeline::prepare(cfg, &file, limits, cache.as_deref()).await?;
        anyhow::Ok(weir::pipeline::run(prepared, signals).await?)
    })?;
    let code = exit_code(&stopped);
    report(stopped);
    // Exit without waiting for the Kafka client to give up on writes nobody waits for.
    std::process::exit(code)
}

/// 0 drained, 3 stopped with messages left to the broker, 130 a second signal.
fn exit_code(stopped: &Stopped) -> i32 {
    match stopped {
        Stopped::Drained => 0,
        Stopped::TimedOut { .. } | Stopped::KafkaAway { .. } => 3,
        Stopped::Interrupted { .. } => 130,
    }
}

/// How the run ended, in the log.
fn report(stopped: Stopped) {
    match stopped {
        Stopped::Drained => {
            tracing::info!("stopped: every message taken in was written and acknowledged")
        }
        Stopped::TimedOut { left } => tracing::warn!(
            left,
            "stopped at the shutdown timeout: {left} message(s) left unacknowledged with the broker, which redelivers them"
        ),
        Stopped::KafkaAway { left, why } => tracing::warn!(
            left,
            "stopped without waiting out the shutdown timeout, since no write can complete ({why}): {left} message(s) left unacknowledged with the broker, which redelivers them"
        ),
        Stopped::Interrupted { left } => tracing::warn!(
            left,
            "stopped at once on a second signal: {left} message(s) left unacknowledged with the broker, which redelivers them"
        ),
    }
}
