//! `weir replay`: a range of the raw-capture topic through the version that processed it.

use super::quarantine::unix_ms;
use crate::engine::EngineArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use weir::config::Config;
use weir::replay::{Job, Mode, Range, RunControl, Summary};

#[derive(Args)]
pub struct ReplayArgs {
    /// The config the messages were processed under.
    #[arg(long, env = "WEIR_CONFIG", default_value = "weir.toml")]
    config: PathBuf,
    /// The raw-capture topic (output.raw_topic).
    #[arg(long)]
    from: String,
    /// Write the replayed records to this topic.
    #[arg(long, group = "mode")]
    to: Option<String>,
    /// Compare with what was published instead of writing.
    #[arg(long, group = "mode")]
    verify: bool,
    /// With --to: write quarantine outcomes here (otherwise they are only counted).
    #[arg(long, requires = "to")]
    quarantine_to: Option<String>,
    /// Let --to / --quarantine-to name a topic weir run writes (a cohort's output, the
    /// quarantine, the raw capture, the control topic): refused without it, since replayed
    /// records would mix with live ones.
    #[arg(long, requires = "to")]
    allow_live_topic: bool,
    /// Replay every message through this stored version instead of its own.
    #[arg(long, value_name = "NAME@VERSION")]
    through: Option<String>,
    /// Only this partition of --from.
    #[arg(long)]
    partition: Option<i32>,
    /// First offset (inclusive).
    #[arg(long)]
    start_offset: Option<i64>,
    /// Last offset (exclusive).
    #[arg(long)]
    end_offset: Option<i64>,
    /// Records at or after this time (RFC 3339, e.g. 2026-11-25T10:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    since: Option<SystemTime>,
    /// Records before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    until: Option<SystemTime>,
    /// Keep progress in a consumer group named after this replay, and go on from where an
    /// interrupted run of the same replay stopped (records it wrote are not written again).
    #[arg(long)]
    resume: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn execute(args: ReplayArgs) -> Result<ExitCode> {
    let cfg = Config::load(&args.config)?;
    refuse_live_topics(&args, &cfg)?;
    let host = args.engine.host()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let control = RunControl {
        resume: args.resume,
        stop: Default::default(),
    };
    // SIGINT/SIGTERM: finish the batch in hand, record progress, print the summary.
    let stop = control.stop.clone();
    rt.spawn(async move {
        crate::signals::first().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let job = Job {
        from: args.from.clone(),
        range: Range {
            partition: args.partition,
            start_offset: args.start_offset,
            end_offset: args.end_offset,
            since_ms: args.since.map(unix_ms),
            until_ms: args.until.map(unix_ms),
        },
        mode: match &args.to {
            Some(to) => Mode::To(to.clone(), args.quarantine_to.clone()),
            None => Mode::Verify,
        },
        through: args.through.clone(),
        control,
    };
    let mut progress = Progress::new();
    let summary = rt.block_on(weir::replay::run(&cfg, host, job, &mut |done, total| {
        progress.show(done, total)
    }))?;
    progress.finish();
    print_summary(&args, &summary)?;
    Ok(exit_code(&args, &summary))
}

/// --to / --quarantine-to naming a topic `weir run` uses is refused unless allowed.
fn refuse_live_topics(args: &ReplayArgs, cfg: &Config) -> Result<()> {
    for (flag, topic) in [("--to", &args.to), ("--quarantine-to", &args.quarantine_to)] {
        if let Some(topic) = topic
            && let Some(key) = weir::replay::live_topic(cfg, topic)
            && !args.allow_live_topic
        {
            bail!(
                "{flag} {topic} is {key} in {}, a topic weir run uses: replayed records would mix with live ones. Give a new topic, or add --allow-live-topic if that is meant",
                args.config.display()
            );
        }
    }
    Ok(())
}

/// Progress on standard error: a line rewritten in place on a terminal, otherwise a line
/// every 5 s or 1,000 messages.
struct Progress {
    tty: bool,
    started: Instant,
    last: Instant,
    printed: u64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Instant::now(),
            printed: 0,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        if !self.tty
            && self.last.elapsed() < Duration::from_secs(5)
            && done < total
            && done < self.printed + 1000
        {
            return;
        }
        self.printed = done;
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let eta = if rate > 0.0 {
            (total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        let line = format!("{done}/{total} messages, {rate:.0} msg/s, ETA {eta:.0} s");
        if self.tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn print_summary(args: &ReplayArgs, summary: &Summary) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!(
            "replayed {}  identical {}  different {}  missing {}  failed {}  written {}  quarantined {}  unrouted {}",
            summary.replayed,
            summary.identical,
            summary.different,
            summary.missing,
            summary.failed,
            summary.written,
            summary.quarantined,
            summary.unrouted
        );
        for e in &summary.examples {
            println!(
                "{}[{}] message {} through {}:\n  published: {}\n  replayed:  {}",
                args.from, e.partition, e.message_id, e.replayed_with, e.published, e.replayed
            );
        }
    }
    if summary.interrupted {
        eprintln!(
            "interrupted: {}",
            if args.resume {
                "run the same command again to go on"
            } else {
                "add --resume to make a replay resumable"
            }
        );
    }
    Ok(())
}

/// 130 interrupted; 1 on a failure, or with --verify on any difference or missing record.
fn exit_code(args: &ReplayArgs, summary: &Summary) -> ExitCode {
    if summary.interrupted {
        return ExitCode::from(130);
    }
    let bad = summary.failed
        + if args.verify {
            summary.different + summary.missing
        } else {
            0
        };
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
