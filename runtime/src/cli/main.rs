//! The `weir` command line: one file per subcommand in `commands/`, the shared flags in
//! `engine.rs` and `admin.rs`. Every flag can also be set from an environment variable.

mod admin;
mod commands;
mod engine;
mod signals;

use clap::{Parser, Subcommand};
use commands::{cohort, plugin, quarantine, registry, replay, run, transform};
use std::process::ExitCode;

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
    Plugin(plugin::PluginCommand),
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
    Transform(transform::TransformArgs),
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
    Run(run::RunArgs),
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
    Replay(replay::ReplayArgs),
    /// What is in the quarantine topic, and redriving it through a plugin version.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// The built-in Confluent-compatible schema registry.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// The cohorts of a running weir.
    #[command(subcommand)]
    Cohort(cohort::CohortCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let done = match cli.command {
        Command::Plugin(c) => plugin::execute(c),
        Command::Transform(args) => transform::execute(args),
        Command::Run(args) => run::execute(args).map(|never| match never {}),
        Command::Replay(args) => replay::execute(args),
        Command::Quarantine(c) => quarantine::execute(c),
        Command::Registry(c) => registry::execute(c),
        Command::Cohort(c) => cohort::execute(c),
    };
    done.unwrap_or_else(|e| {
        eprintln!("error: {}", chain(&e));
        ExitCode::FAILURE
    })
}

/// An error and its causes on one line, each cause once: library errors keep their
/// source and may also say it in their own text, which would otherwise print twice. A
/// cause is left out only when the link above it already says it.
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    let mut above = text.clone();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !above.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        above = cause;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x.pem: {0}")]
    struct Saying(#[source] std::io::Error);

    #[test]
    fn a_cause_the_error_already_says_is_printed_once() {
        let io = || std::io::Error::other("no such file");
        let e = anyhow::Error::new(Saying(io())).context("mqtt.tls.ca_file");
        assert_eq!(
            chain(&e),
            "mqtt.tls.ca_file: cannot read x.pem: no such file"
        );
        let e = anyhow::Error::new(io()).context("reading the config");
        assert_eq!(chain(&e), "reading the config: no such file");
    }
}
