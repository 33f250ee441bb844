//! `weir quarantine`: what is in the quarantine topic, and redriving it.

use crate::engine::EngineArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;
use weir::config::Config;
use weir::quarantine::Filter;

/// Which quarantine entries.
#[derive(Args)]
pub struct QuarantineFilter {
    /// The config (Kafka, the quarantine topic, cohorts, the plugin store).
    #[arg(long, env = "WEIR_CONFIG", default_value = "weir.toml")]
    config: PathBuf,
    /// Only entries of this cohort.
    #[arg(long)]
    cohort: Option<String>,
    /// Only entries with this code (weir.error.code), e.g. reading.unit.
    #[arg(long)]
    code: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    since: Option<SystemTime>,
    /// Only entries before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    until: Option<SystemTime>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl QuarantineFilter {
    fn load(&self) -> Result<(Config, Filter)> {
        Ok((
            Config::load(&self.config)?,
            Filter {
                cohort: self.cohort.clone(),
                code: self.code.clone(),
                since_ms: self.since.map(unix_ms),
                until_ms: self.until.map(unix_ms),
            },
        ))
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Entries grouped by cohort and code.
    List {
        #[command(flatten)]
        filter: QuarantineFilter,
    },
    /// Single entries with their headers and payload.
    Show {
        #[command(flatten)]
        filter: QuarantineFilter,
        /// At most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Re-run entries through a plugin version: what now succeeds is published to the
    /// cohort's topic with weir.redrive.from (the entry's partition:offset); what still
    /// fails goes back to quarantine with weir.redrive.count + 1. Entries at --max-redrives
    /// are refused. Progress is kept per selection, so a second run finds only newer entries.
    Redrive {
        #[command(flatten)]
        filter: QuarantineFilter,
        /// The version (default: the cohort's current pin).
        #[arg(long, value_name = "NAME@VERSION")]
        through: Option<String>,
        /// Count what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse entries redriven this many times already.
        #[arg(long, default_value_t = 3)]
        max_redrives: u32,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

pub fn execute(command: QuarantineCommand) -> Result<ExitCode> {
    match command {
        QuarantineCommand::List { filter } => list(&filter),
        QuarantineCommand::Show { filter, limit } => show(&filter, limit),
        QuarantineCommand::Redrive {
            filter,
            through,
            dry_run,
            max_redrives,
            engine,
        } => redrive(&filter, through.as_deref(), dry_run, max_redrives, &engine),
    }
}

fn list(filter: &QuarantineFilter) -> Result<ExitCode> {
    let (cfg, f) = filter.load()?;
    let listing = weir::quarantine::list(&cfg, &f)?;
    if filter.json {
        println!("{}", serde_json::to_string(&listing)?);
    } else {
        for (cohort, codes) in &listing.groups {
            for (code, n) in codes {
                println!("{cohort:<16} {code:<28} {n:>8}");
            }
        }
        println!("{} entries", listing.total);
    }
    Ok(ExitCode::SUCCESS)
}

fn show(filter: &QuarantineFilter, limit: usize) -> Result<ExitCode> {
    let (cfg, f) = filter.load()?;
    let entries = weir::quarantine::show(&cfg, &f, limit)?;
    if filter.json {
        println!("{}", serde_json::to_string(&entries)?);
    } else {
        for e in &entries {
            println!("[{}] offset {} ({} bytes)", e.partition, e.offset, e.size);
            for (k, v) in &e.headers {
                println!("  {k}: {v}");
            }
            println!("  payload: {}", e.payload);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn redrive(
    filter: &QuarantineFilter,
    through: Option<&str>,
    dry_run: bool,
    max_redrives: u32,
    engine: &EngineArgs,
) -> Result<ExitCode> {
    let (cfg, f) = filter.load()?;
    let host = engine.host()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let done = rt.block_on(weir::quarantine::redrive(
        &cfg,
        host,
        &f,
        through,
        max_redrives,
        dry_run,
    ))?;
    if filter.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "{}selected {}  published {}  requarantined {}  refused {}  skipped {}  records already in Kafka {}",
            if dry_run { "(dry run) " } else { "" },
            done.selected,
            done.published,
            done.requarantined,
            done.refused,
            done.skipped,
            done.already_published
        );
    }
    Ok(ExitCode::SUCCESS)
}
