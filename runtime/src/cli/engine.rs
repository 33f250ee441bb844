//! The flags every command that loads plugins shares: sandbox limits and the compiled cache.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir::transform::{Host, Limits};

/// Sandbox limits and the compiled-plugin cache.
#[derive(Args)]
pub struct EngineArgs {
    /// Linear-memory cap per plugin instance, MiB.
    #[arg(long, env = "WEIR_PLUGIN_MEMORY_MIB", default_value_t = 64)]
    plugin_memory_mib: usize,
    /// CPU budget per message in a call, milliseconds (a call gets at least 100 ms).
    #[arg(long, env = "WEIR_PLUGIN_TIME_MS", default_value_t = 20)]
    plugin_time_ms: u64,
    /// Most bytes the records of one message may total, KiB (values, keys and headers as
    /// copied out of the plugin, each record counting 64 bytes and each header 48 besides;
    /// a value counts as the larger of what the plugin returned and its Avro; a call
    /// copies at most 64 MiB). More is quarantined as plugin.output-too-large.
    #[arg(long, env = "WEIR_PLUGIN_OUTPUT_KIB", default_value_t = 4096)]
    plugin_output_kib: usize,
    /// Directory for precompiled plugins (default: `weir run` keeps them beside the plugin
    /// store, in <plugins.store>/compiled; other commands in $XDG_CACHE_HOME/weir or
    /// ~/.cache/weir).
    #[arg(long, env = "WEIR_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile plugins on every load instead of caching the result.
    #[arg(long, env = "WEIR_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    no_cache: bool,
}

impl EngineArgs {
    /// The sandbox limits these flags give.
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.plugin_memory_mib << 20,
            time_per_message: Duration::from_millis(self.plugin_time_ms),
            max_output_bytes_per_message: self.plugin_output_kib.max(1) << 10,
            ..Limits::default()
        }
    }

    /// The compiled cache, given a default for when --cache-dir is not set (None: no cache).
    pub fn cache_or(&self, default: Option<PathBuf>) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or(default)
        }
    }

    /// A Wasm engine with these limits, caching in the user's cache directory.
    pub fn host(&self) -> Result<Host> {
        Host::new(self.limits(), self.cache_or(user_cache_dir()).as_deref())
            .context("starting the Wasm engine")
    }
}

/// `$XDG_CACHE_HOME/weir/compiled`, or `~/.cache/weir/compiled`.
fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("weir").join("compiled"))
}
