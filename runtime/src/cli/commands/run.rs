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
    leave(code)
}

/// End the process at once with `code`: without waiting for the Kafka clients to give up
/// on writes nobody waits for, and without the C library's exit handlers.
///
/// `std::process::exit` runs those handlers (OpenSSL's global cleanup among them, and the
/// allocator's) while librdkafka's threads still run, and may be reconnecting to a broker
/// over TLS at that moment: a process that had drained everything could then die of a
/// signal on its way out, and its supervisor would count a clean stop as a crash. Nothing
/// weir needs happens in those handlers: stdout is flushed here and the log goes to stderr,
/// which is not buffered.
#[allow(unsafe_code)]
fn leave(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` has no preconditions; it ends every thread of the process without
    // running exit handlers or destructors, which is the point (above).
    unsafe { libc::_exit(code) }
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
