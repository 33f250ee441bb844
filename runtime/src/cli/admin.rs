//! Commands that talk to a running weir's admin API: where it is, how to authenticate,
//! and how its JSON answers are printed.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weir::admin_client::{AdminClient, ClientError};

/// Where the admin API is and how to authenticate.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin API of a running weir (its [admin] listen address).
    #[arg(long, env = "WEIR_ADMIN_URL", default_value = "http://127.0.0.1:9900")]
    admin: String,
    /// Bearer token: the SECRET of one of the server's tokens (its WEIR_ADMIN_TOKEN or
    /// admin.token_file entries; NAME:SECRET is accepted as well).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that issued the admin listener's certificate, for an https://
    /// --admin whose certificate the system does not trust.
    #[arg(long, env = "WEIR_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

impl AdminArgs {
    /// Call the admin API; print its answer as JSON (`--json`) or as `text` makes it. A
    /// refusal is printed with the server's reason and exits 1.
    pub fn call<F, Fut, T>(&self, call: F, text: impl FnOnce(&T) -> String) -> Result<ExitCode>
    where
        F: FnOnce(AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
        T: serde::Serialize,
    {
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let client =
            match AdminClient::new(&self.admin, self.token.as_deref(), self.admin_ca.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
        match rt.block_on(call(client)) {
            Ok(v) if self.json => println!("{}", serde_json::to_string(&v)?),
            Ok(v) => println!("{}", text(&v)),
            Err(e) => {
                eprintln!("refused: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// One line per element, or `(none)`.
pub fn table<T>(items: &[T], line: impl Fn(&T) -> String) -> String {
    let lines: Vec<String> = items.iter().map(line).collect();
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join("\n")
    }
}

/// Milliseconds since the Unix epoch (what the audit trail stores) as RFC 3339, UTC.
pub fn timestamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}
