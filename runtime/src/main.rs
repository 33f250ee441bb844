//! The `weir` command line. Every flag can also be set from an environment variable.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use weir::transform::{Host, Limits};

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
    /// Work with plugin files.
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
    /// The built-in Confluent-compatible schema registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
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
    },
}

#[derive(Subcommand)]
enum PluginCommand {
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

/// Sandbox limits and the compiled-plugin cache.
#[derive(Args)]
struct EngineArgs {
    /// Linear-memory cap per plugin instance, MiB.
    #[arg(long, env = "WEIR_PLUGIN_MEMORY_MIB", default_value_t = 64)]
    plugin_memory_mib: usize,
    /// CPU budget per message in a call, milliseconds (a call gets at least 100 ms).
    #[arg(long, env = "WEIR_PLUGIN_TIME_MS", default_value_t = 20)]
    plugin_time_ms: u64,
    /// Directory for precompiled plugins (default: $XDG_CACHE_HOME/weir or ~/.cache/weir).
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
        Command::Run { config, engine } => {
            let file = config.display().to_string();
            let cfg = weir::config::Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let stopped = rt.block_on(async move {
                let signals = signals()?;
                let cache = engine.cache();
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
        }) => {
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
