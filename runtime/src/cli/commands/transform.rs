//! `weir transform`: a plugin dry-run over JSON lines, one outcome per line.

use crate::engine::EngineArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct TransformArgs {
    /// The plugin's .wasm component.
    #[arg(long, env = "WEIR_PLUGIN")]
    plugin: PathBuf,
    /// Input file of JSON lines; `-` for standard input.
    #[arg(long, default_value = "-")]
    input: String,
    /// Plugin config entry, as the cohort's `config` table would give it (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_kv)]
    config: Vec<(String, String)>,
    /// Messages per `process` call.
    #[arg(long, env = "WEIR_BATCH_SIZE", default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn execute(args: TransformArgs) -> Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let plugin = args.engine.host()?.load_file(&args.plugin)?;
    let configured = plugin
        .configure(args.config, plugin.info().id())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} refused the config", plugin.info().id()))?;
    let input: Box<dyn BufRead> = if args.input == "-" {
        Box::new(BufReader::new(std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open input {}", args.input))?;
        Box::new(BufReader::new(f))
    };
    let summary = weir::dryrun::run(
        &configured,
        input,
        std::io::stdout().lock(),
        args.batch_size,
    )?;
    if summary.invalid > 0 {
        eprintln!(
            "{} of {} input lines were invalid (reported as input.invalid)",
            summary.invalid, summary.lines
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEY=VALUE` → (KEY, VALUE); the value may be empty and may hold `=`.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_entries_split_at_the_first_equals_sign() {
        assert_eq!(super::parse_kv("unit=C"), Ok(("unit".into(), "C".into())));
        assert_eq!(super::parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(super::parse_kv("a="), Ok(("a".into(), String::new())));
        assert!(super::parse_kv("=x").is_err());
        assert!(super::parse_kv("novalue").is_err());
    }
}
