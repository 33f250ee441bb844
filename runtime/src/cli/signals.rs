//! SIGINT and SIGTERM, as the long-running commands take them.

use anyhow::{Context, Result};

/// Every SIGINT or SIGTERM, as a message (`weir run`: the first drains, a second stops).
pub fn every() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down (a second signal stops at once)"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down (a second signal stops at once)"),
            }
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn first() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
