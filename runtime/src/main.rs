//! The `weir` command line. Every flag can also be set from an environment variable.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use weir::transform::{Host, Limits};

#[global_allocator]
static ALLOCATOR: weir::Allocator = mimalloc::MiMalloc;

/// weir moves device telemetry from MQTT into governed Kafka topics through sandboxed
/// WebAssembly transforms, acknowledging MQTT only after Kafka has every output.
#[derive(Parser)]
#[command(name = "weir", version, propagate_version = true)]
#[command(
    after_help = "Start with `weir plugin inspect` and `weir transform` to try a plugin on sample messages."
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `weir=debug,warn`.
    #[arg(long, global = true, env = "WEIR_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect plugin files; push, promote and roll back versions in a running weir.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Dry-run a plugin over messages given as JSON lines; print one outcome per line.
    ///
    /// Input lines: {"topic": "plant/7/thermostat/t-1", "payload": "<utf-8 text>"} (or
    /// "payload_base64"), optionally "properties": {"k": "v"}, "content_type",
    /// "received_at_ms".
    ///
    /// Output lines: {"outcome":"emit","records":[{"key":..,"value":{..},"headers":{..}}]},
    /// {"outcome":"reject","code":..,"reason":..}, {"outcome":"skip"} or
    /// {"outcome":"fail","code":"plugin.trap|plugin.timeout|plugin.oom|schema.violation|..",
    /// "reason":..}. Record values are shown decoded from the Avro that would be published.
    #[command(verbatim_doc_comment)]
    Transform(TransformArgs),
    /// Run the pipeline: MQTT → cohort plugin → Avro → Kafka, acknowledging MQTT only after
    /// Kafka has every output.
    ///
    /// SIGINT/SIGTERM stops reading and finishes what is in flight for at most
    /// output.shutdown_timeout_s (default 30), then disconnects; what is not acknowledged
    /// stays with the broker. A second signal stops at once. Exit codes: 0 drained,
    /// 3 shutdown timeout, 130 second signal, 1 start-up error.
    ///
    /// The admin listener (admin.listen, default 127.0.0.1:9900) serves /metrics, /healthz
    /// and /readyz.
    ///
    /// Quarantine codes (weir.error.code): payload.too-large, route.unmatched, plugin.trap,
    /// plugin.timeout, plugin.oom, plugin.contract, plugin.output-too-large,
    /// schema.violation, sink.produce-failed, or the plugin's own rejection code.
    ///
    /// See examples/weir.toml for the config; every scalar key can be overridden from the
    /// environment as WEIR_<TABLE>_<KEY> (WEIR_MQTT_URL, WEIR_KAFKA_BOOTSTRAP,
    /// WEIR_REGISTRY_URL, ...).
    Run {
        /// The config file.
        #[arg(long, env = "WEIR_CONFIG", default_value = "weir.toml")]
        config: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Re-run a range of the raw-capture topic through the exact plugin version that first
    /// processed each message (recorded on its raw capture), or --through a named one.
    ///
    /// --to TOPIC writes the results to TOPIC in the same wire format (quarantine outcomes
    /// to --quarantine-to, or only counted). --verify writes nothing and compares with what
    /// was published under each message's id (weir.message.id): the same version must give
    /// byte-identical records, so any difference or missing record exits 1 with examples.
    /// Every version the range needs must be in the plugin store; a missing one is an error
    /// before any work. Reads config (Kafka, registry, store, cohorts) from --config.
    #[command(group = clap::ArgGroup::new("mode").required(true))]
    Replay(ReplayArgs),
    /// What is in the quarantine topic, and redriving it through a plugin version.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// The built-in Confluent-compatible schema registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// The cohorts of a running weir.
    #[command(subcommand)]
    Cohort(CohortCommand),
}

#[derive(Subcommand)]
enum RegistryCommand {
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

/// Where the admin API is and how to authenticate.
#[derive(Args)]
struct AdminArgs {
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
    fn client(&self) -> Result<weir::admin_client::AdminClient, weir::admin_client::ClientError> {
        weir::admin_client::AdminClient::new(
            &self.admin,
            self.token.as_deref(),
            self.admin_ca.as_deref(),
        )
    }
}

#[derive(Subcommand)]
enum CohortCommand {
    /// Each cohort, the plugin version it runs (name@version and sha256), since when and by
    /// which token.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a plugin (world, imports, describe, schema, size) and store it in a running
    /// weir; prints name@version and sha256. A version is immutable: other bytes under a
    /// stored name@version are refused.
    Push {
        /// The plugin's .wasm component (`cargo xtask plugins` builds them).
        file: PathBuf,
        /// A fixtures directory (input.jsonl, expected.jsonl, as for `weir transform`): the
        /// promote gate runs them with the cohort's config and refuses on a mismatch.
        #[arg(long, value_name = "DIR")]
        fixtures: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stored plugin versions and the cohorts that run them.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Gate a stored version, then swap it in for a cohort with no restart and no loss.
    ///
    /// The gate: the version's schema must be accepted under the cohort's subject at its
    /// compatibility level (the registry's reason is printed if not), and its `init` must
    /// accept the cohort's config. Then the pin is written to the control topic and every
    /// weir process reading it switches between two batches. Prints the cutover.
    Promote {
        /// The cohort (a [[cohort]] name).
        cohort: String,
        /// The version, NAME@VERSION.
        plugin: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pin the version the cohort ran before its current pin.
    Rollback {
        /// The cohort.
        cohort: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run a stored version beside a cohort's live one, on a copy of its live messages;
    /// nothing is published. Reports, per message, whether the outcomes and record bytes
    /// are identical, different, rejected by one side or failed in the candidate, with the
    /// first differences as field-level diffs. The candidate gets a tenth of a core; copies
    /// it cannot keep up with are skipped (and counted), never waited for.
    #[command(group = clap::ArgGroup::new("limit").required(true))]
    Shadow {
        /// The cohort.
        cohort: String,
        /// The candidate, NAME@VERSION (pushed first).
        plugin: String,
        /// Stop after this many messages.
        #[arg(long, group = "limit")]
        messages: Option<u64>,
        /// Stop after this long, e.g. 30s or 5m (at most 10 minutes).
        #[arg(long = "for", group = "limit", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The cohort's audit trail: pushes, promotes, rollbacks and cutovers.
    History {
        /// The cohort.
        cohort: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print a plugin's name, version, sha256, contract version and declared schema.
    Inspect {
        /// The plugin's .wasm component.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Args)]
struct TransformArgs {
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

/// Which quarantine entries.
#[derive(Args)]
struct QuarantineFilter {
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
    since: Option<std::time::SystemTime>,
    /// Only entries before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    until: Option<std::time::SystemTime>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl QuarantineFilter {
    fn load(&self) -> Result<(weir::config::Config, weir::quarantine::Filter)> {
        let ms = |t: Option<std::time::SystemTime>| {
            t.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            })
        };
        Ok((
            weir::config::Config::load(&self.config)?,
            weir::quarantine::Filter {
                cohort: self.cohort.clone(),
                code: self.code.clone(),
                since_ms: ms(self.since),
                until_ms: ms(self.until),
            },
        ))
    }
}

#[derive(Subcommand)]
enum QuarantineCommand {
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

#[derive(Args)]
struct ReplayArgs {
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
    since: Option<std::time::SystemTime>,
    /// Records before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    until: Option<std::time::SystemTime>,
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

/// Sandbox limits and the compiled-plugin cache.
#[derive(Args)]
struct EngineArgs {
    /// Linear-memory cap per plugin instance, MiB.
    #[arg(long, env = "WEIR_PLUGIN_MEMORY_MIB", default_value_t = 64)]
    plugin_memory_mib: usize,
    /// CPU budget per message in a call, milliseconds (a call gets at least 100 ms).
    #[arg(long, env = "WEIR_PLUGIN_TIME_MS", default_value_t = 20)]
    plugin_time_ms: u64,
    /// Most bytes the records of one message may total, KiB (values, keys and headers as
    /// copied out of the plugin; a call copies at most 64 MiB). More is quarantined as
    /// plugin.output-too-large.
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
    fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.plugin_memory_mib << 20,
            time_per_message: Duration::from_millis(self.plugin_time_ms),
            max_output_bytes_per_message: self.plugin_output_kib.max(1) << 10,
            ..Limits::default()
        }
    }

    fn cache(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_cache_dir)
        }
    }

    fn host(&self) -> Result<Host> {
        Host::new(self.limits(), self.cache().as_deref()).context("starting the Wasm engine")
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("weir").join("compiled"))
}

/// Every SIGINT or SIGTERM, as a message.
fn signals() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let cfg = weir::config::Config::load(&args.config)?;
    let ms = |t: Option<std::time::SystemTime>| {
        t.map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
    };
    let range = weir::replay::Range {
        partition: args.partition,
        start_offset: args.start_offset,
        end_offset: args.end_offset,
        since_ms: ms(args.since),
        until_ms: ms(args.until),
    };
    for (flag, topic) in [("--to", &args.to), ("--quarantine-to", &args.quarantine_to)] {
        if let Some(topic) = topic
            && let Some(key) = weir::replay::live_topic(&cfg, topic)
            && !args.allow_live_topic
        {
            bail!(
                "{flag} {topic} is {key} in {}, a topic weir run uses: replayed records would mix with live ones. Give a new topic, or add --allow-live-topic if that is meant",
                args.config.display()
            );
        }
    }
    let mode = match args.to {
        Some(to) => weir::replay::Mode::To(to, args.quarantine_to),
        None => weir::replay::Mode::Verify,
    };
    let host = args.engine.host()?;
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut printed = 0u64;
    let mut progress = |done: u64, total: u64| {
        if !tty && last.elapsed() < Duration::from_secs(5) && done < total && done < printed + 1000
        {
            return;
        }
        printed = done;
        last = std::time::Instant::now();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        let eta = if rate > 0.0 {
            (total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        let line = format!("{done}/{total} messages, {rate:.0} msg/s, ETA {eta:.0} s");
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let control = weir::replay::RunControl {
        resume: args.resume,
        stop: Default::default(),
    };
    // SIGINT/SIGTERM: finish the batch in hand, record progress, print the summary.
    let stop = control.stop.clone();
    rt.spawn(async move {
        shutdown_signal().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let job = weir::replay::Job {
        from: args.from.clone(),
        range,
        mode,
        through: args.through.clone(),
        control,
    };
    let summary = rt.block_on(weir::replay::run(&cfg, host, job, &mut progress))?;
    if tty {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
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
        return Ok(ExitCode::from(130));
    }
    let bad = summary.failed
        + if args.verify {
            summary.different + summary.missing
        } else {
            0
        };
    Ok(if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Call the admin API; print its answer as JSON (`--json`) or as `text` makes it.
fn lifecycle_call<F, Fut>(
    admin: &AdminArgs,
    call: F,
    text: impl FnOnce(&serde_json::Value) -> String,
) -> Result<ExitCode>
where
    F: FnOnce(weir::admin_client::AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, weir::admin_client::ClientError>>,
{
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let client = match admin.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match rt.block_on(call(client)) {
        Ok(v) if admin.json => println!("{v}"),
        Ok(v) => println!("{}", text(&v)),
        Err(e) => {
            eprintln!("refused: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn str_of(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// One line per element of a JSON array.
fn table(v: &serde_json::Value, line: impl Fn(&serde_json::Value) -> String) -> String {
    let lines: Vec<String> = v.as_array().into_iter().flatten().map(line).collect();
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join("\n")
    }
}

/// `  slots 0,3 here; 1,4 at <process>` for a cohort view's `slots`, or nothing.
fn slots_summary(slots: &serde_json::Value) -> String {
    let Some(slots) = slots.as_array() else {
        return String::new();
    };
    let mut by: std::collections::BTreeMap<(bool, &str), Vec<String>> = Default::default();
    for s in slots {
        by.entry((!s["here"].as_bool().unwrap_or(false), str_of(&s["process"])))
            .or_default()
            .push(s["slot"].to_string());
    }
    if by.is_empty() {
        return "  slots: none held yet".into();
    }
    let parts: Vec<String> = by
        .into_iter()
        .map(|((elsewhere, process), slots)| {
            if elsewhere {
                format!("{} at {process}", slots.join(","))
            } else {
                format!("{} here", slots.join(","))
            }
        })
        .collect();
    format!("  slots {}", parts.join("; "))
}

/// Milliseconds since the Unix epoch (what the audit trail stores) as RFC 3339, UTC.
fn timestamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn describe_change(v: &serde_json::Value) -> String {
    let mut out = format!(
        "{}: {}@{} → {}@{} (sha256 {}); gate {} ms, live in {} ms",
        str_of(&v["cohort"]),
        str_of(&v["from"]["name"]),
        str_of(&v["from"]["version"]),
        str_of(&v["to"]["name"]),
        str_of(&v["to"]["version"]),
        str_of(&v["to"]["sha256"]),
        v["gate_ms"],
        v["swap_ms"],
    );
    match v["cutover"].as_object() {
        Some(c) => out.push_str(&format!(
            "\ncutover: first message on {} at {}",
            c.get("first_topic").and_then(|t| t.as_str()).unwrap_or("-"),
            timestamp(c.get("at_ms").and_then(|t| t.as_i64()).unwrap_or(0))
        )),
        None => out.push_str("\ncutover: with the cohort's next message"),
    }
    out
}

fn describe_shadow(v: &serde_json::Value) -> String {
    let mut out = format!(
        "{}: {}@{} (live) vs {}@{} over {} messages{}\n  identical {}  different {}  live-rejected {}  candidate-rejected {}  candidate-failed {}  skipped {}",
        str_of(&v["cohort"]),
        str_of(&v["live"]["name"]),
        str_of(&v["live"]["version"]),
        str_of(&v["candidate"]["name"]),
        str_of(&v["candidate"]["version"]),
        v["messages"],
        if v["complete"] == true {
            ""
        } else {
            " (cut short at 10 minutes)"
        },
        v["identical"],
        v["different"],
        v["live_rejected"],
        v["candidate_rejected"],
        v["candidate_failed"],
        v["skipped"],
    );
    for e in v["examples"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n{}: live {} / candidate {}",
            str_of(&e["topic"]),
            str_of(&e["live"]["outcome"]),
            str_of(&e["candidate"]["outcome"]),
        ));
        for d in e["diff"].as_array().into_iter().flatten() {
            let show =
                |x: Option<&serde_json::Value>| x.map_or("(absent)".to_owned(), |x| x.to_string());
            out.push_str(&format!(
                "\n    {}: {} → {}",
                str_of(&d["field"]),
                show(d.get("live")),
                show(d.get("candidate")),
            ));
        }
        for (side, o) in [("live", &e["live"]), ("candidate", &e["candidate"])] {
            if let Some(code) = o["code"].as_str() {
                out.push_str(&format!("\n    {side}: {code}: {}", str_of(&o["reason"])));
            }
        }
    }
    out
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Plugin(PluginCommand::Inspect { file, json, engine }) => {
            let plugin = engine.host()?.load_file(&file)?;
            let info = plugin.info();
            let schema: serde_json::Value =
                serde_json::from_str(&info.schema).context("the declared schema is not JSON")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": info.name, "version": info.version, "sha256": info.sha256,
                        "contract": info.contract, "schema": schema,
                    })
                );
            } else {
                println!("name:      {}", info.name);
                println!("version:   {}", info.version);
                println!("sha256:    {}", info.sha256);
                println!("contract:  {}", info.contract);
                println!("schema:\n{}", serde_json::to_string_pretty(&schema)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Push {
            file,
            fixtures,
            admin,
        }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let fixtures = match fixtures {
                Some(dir) => {
                    let read = |name: &str| {
                        let path = dir.join(name);
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))
                    };
                    Some((read("input.jsonl")?, read("expected.jsonl")?))
                }
                None => None,
            };
            lifecycle_call(
                &admin,
                |c| async move {
                    let pushed = c.push(bytes).await?;
                    if let Some((input, expected)) = fixtures {
                        let id = str_of(&pushed["plugin"]).to_owned();
                        c.put_fixtures(&id, input, expected).await?;
                    }
                    Ok(pushed)
                },
                |v| {
                    let verb = if v["new"] == true {
                        "stored"
                    } else {
                        "already stored"
                    };
                    format!(
                        "{} {} ({verb}, {} bytes)",
                        str_of(&v["plugin"]),
                        str_of(&v["sha256"]),
                        v["size"]
                    )
                },
            )
        }
        Command::Plugin(PluginCommand::List { admin }) => lifecycle_call(
            &admin,
            |c| async move { c.plugins().await },
            |v| {
                table(v, |p| {
                    let cohorts: Vec<&str> = p["cohorts"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                        .unwrap_or_default();
                    format!(
                        "{}@{}  {}  {:>8} B  by {}  {}",
                        str_of(&p["name"]),
                        str_of(&p["version"]),
                        str_of(&p["sha256"]),
                        p["size"],
                        str_of(&p["by"]),
                        if cohorts.is_empty() {
                            "-".to_owned()
                        } else {
                            format!("live in {}", cohorts.join(", "))
                        }
                    )
                })
            },
        ),
        Command::Cohort(CohortCommand::List { admin }) => lifecycle_call(
            &admin,
            |c| async move { c.cohorts().await },
            |v| {
                table(v, |c| {
                    format!(
                        "{}  {}@{}  {}  {}",
                        str_of(&c["cohort"]),
                        str_of(&c["plugin"]["name"]),
                        str_of(&c["plugin"]["version"]),
                        str_of(&c["plugin"]["sha256"]),
                        match c["since_ms"].as_i64() {
                            Some(ms) => format!("since {} by {}", timestamp(ms), str_of(&c["by"])),
                            None => "pinned by weir.toml".to_owned(),
                        },
                    ) + &slots_summary(&c["slots"])
                })
            },
        ),
        Command::Plugin(PluginCommand::Promote {
            cohort,
            plugin,
            admin,
        }) => lifecycle_call(
            &admin,
            |c| async move { c.promote(&cohort, &plugin).await },
            describe_change,
        ),
        Command::Plugin(PluginCommand::Rollback { cohort, admin }) => lifecycle_call(
            &admin,
            |c| async move { c.rollback(&cohort).await },
            describe_change,
        ),
        Command::Plugin(PluginCommand::Shadow {
            cohort,
            plugin,
            messages,
            duration,
            admin,
        }) => {
            let for_ms = duration.map(|d| d.as_millis().max(1) as u64);
            lifecycle_call(
                &admin,
                |c| async move { c.shadow(&cohort, &plugin, messages, for_ms).await },
                describe_shadow,
            )
        }
        Command::Plugin(PluginCommand::History { cohort, admin }) => lifecycle_call(
            &admin,
            |c| async move { c.history(&cohort).await },
            |v| {
                table(v, |a| {
                    let what = match a["action"].as_str() {
                        Some("cutover") => format!(
                            "{} switched at message on {}",
                            str_of(&a["cutover"]["process"]),
                            str_of(&a["cutover"]["first_topic"])
                        ),
                        _ => format!(
                            "{} → {}",
                            a["old_sha256"]
                                .as_str()
                                .map_or("-", |s| &s[..s.len().min(12)]),
                            str_of(&a["new_sha256"])
                                .chars()
                                .take(12)
                                .collect::<String>()
                        ),
                    };
                    let signed = match a["signer"].as_str() {
                        Some(key) => format!(" (key {key})"),
                        None => String::new(),
                    };
                    format!(
                        "{}  {:<8}  {}  by {}{signed}  {what}",
                        timestamp(a["at_ms"].as_i64().unwrap_or(0)),
                        str_of(&a["action"]),
                        str_of(&a["plugin"]),
                        str_of(&a["by"]),
                    )
                })
            },
        ),
        Command::Replay(args) => replay(args),
        Command::Quarantine(QuarantineCommand::List { filter }) => {
            let (cfg, f) = filter.load()?;
            let listing = weir::quarantine::list(&cfg, &f).map_err(anyhow::Error::msg)?;
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
        Command::Quarantine(QuarantineCommand::Show { filter, limit }) => {
            let (cfg, f) = filter.load()?;
            let entries = weir::quarantine::show(&cfg, &f, limit).map_err(anyhow::Error::msg)?;
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
        Command::Quarantine(QuarantineCommand::Redrive {
            filter,
            through,
            dry_run,
            max_redrives,
            engine,
        }) => {
            let (cfg, f) = filter.load()?;
            let host = engine.host()?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let done = rt
                .block_on(weir::quarantine::redrive(
                    &cfg,
                    host,
                    &f,
                    through.as_deref(),
                    max_redrives,
                    dry_run,
                ))
                .map_err(anyhow::Error::msg)?;
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
        Command::Run { config, engine } => {
            let file = config.display().to_string();
            let cfg = weir::config::Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let stopped = rt.block_on(async move {
                let signals = signals()?;
                // Precompiled plugins live beside the store unless --cache-dir says otherwise.
                let cache = match (&engine.cache_dir, engine.no_cache) {
                    (_, true) => None,
                    (Some(dir), false) => Some(dir.clone()),
                    (None, false) => Some(cfg.plugins.store.join("compiled")),
                };
                let prepared =
                    weir::pipeline::prepare(cfg, &file, engine.limits(), cache.as_deref()).await?;
                anyhow::Ok(weir::pipeline::run(prepared, signals).await?)
            })?;
            use weir::pipeline::Stopped;
            let code = match stopped {
                Stopped::Drained => {
                    tracing::info!("stopped: every message taken in was written and acknowledged");
                    0
                }
                Stopped::TimedOut { left } => {
                    tracing::warn!(
                        left,
                        "stopped at the shutdown timeout: {left} message(s) left unacknowledged with the broker, which redelivers them"
                    );
                    3
                }
                Stopped::KafkaAway { left, why } => {
                    tracing::warn!(
                        left,
                        "stopped without waiting out the shutdown timeout, since no write can complete ({why}): {left} message(s) left unacknowledged with the broker, which redelivers them"
                    );
                    3
                }
                Stopped::Interrupted { left } => {
                    tracing::warn!(
                        left,
                        "stopped at once on a second signal: {left} message(s) left unacknowledged with the broker, which redelivers them"
                    );
                    130
                }
            };
            // Exit without waiting for the Kafka client to give up on writes nobody waits for.
            std::process::exit(code)
        }
        Command::Registry(RegistryCommand::Serve {
            listen,
            data_dir,
            max_body_bytes,
            max_concurrent,
            credentials_file,
        }) => {
            let credentials = credentials_file
                .as_deref()
                .map(weir_registry::auth::Credentials::read)
                .transpose()
                .context("--credentials-file")?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!(
                    "schema registry listening on http://{}",
                    listener.local_addr()?
                );
                let config = weir_registry::ApiConfig {
                    max_body_bytes,
                    max_concurrent,
                    credentials,
                    ..Default::default()
                };
                weir_registry::serve(listener, &data_dir, config, shutdown_signal())
                    .await
                    .with_context(|| format!("registry with data dir {}", data_dir.display()))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Transform(args) => {
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
            if args.batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
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
    }
}
