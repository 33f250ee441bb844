//! `weir plugin`: inspect plugin files; push, promote, roll back and shadow versions in a
//! running weir; its audit trail.

use crate::admin::{AdminArgs, table, timestamp};
use crate::engine::EngineArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use weir::admin::api::{Action, Audit, Example, PluginView, Promoted, Pushed, ShadowReport};

#[derive(Subcommand)]
pub enum PluginCommand {
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
    /// Start a new plugin: the transform, its Avro schema, fixtures and native tests, in
    /// Rust, Python or TypeScript, which build and pass as written. Prints what to run next.
    New {
        /// The plugin's name: lowercase letters, digits and hyphens (e.g. door-sensor).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: super::scaffold::Lang,
        /// Where to write it (a new directory); `plugins/NAME` by default.
        #[arg(long)]
        dir: Option<PathBuf>,
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

pub fn execute(command: PluginCommand) -> Result<ExitCode> {
    use PluginCommand as P;
    match command {
        P::Inspect { file, json, engine } => inspect(&file, json, &engine),
        P::New { name, lang, dir } => {
            let dir = dir.unwrap_or_else(|| Path::new("plugins").join(&name));
            for path in super::scaffold::create(&name, lang, &dir)? {
                println!("wrote {}", path.display());
            }
            println!("{}", super::scaffold::next_steps(&name, lang, &dir));
            Ok(ExitCode::SUCCESS)
        }
        P::Push {
            file,
            fixtures,
            admin,
        } => push(&file, fixtures.as_deref(), &admin),
        P::List { admin } => admin.call(
            |c| async move { c.plugins().await },
            |v: &Vec<PluginView>| table(v, plugin_line),
        ),
        P::Promote {
            cohort,
            plugin,
            admin,
        } => admin.call(
            |c| async move { c.promote(&cohort, &plugin).await },
            describe_change,
        ),
        P::Rollback { cohort, admin } => admin.call(
            |c| async move { c.rollback(&cohort).await },
            describe_change,
        ),
        P::Shadow {
            cohort,
            plugin,
            messages,
            duration,
            admin,
        } => {
            let for_ms = duration.map(|d| d.as_millis().max(1) as u64);
            admin.call(
                |c| async move { c.shadow(&cohort, &plugin, messages, for_ms).await },
                describe_shadow,
            )
        }
        P::History { cohort, admin } => admin.call(
            |c| async move { c.history(&cohort).await },
            |v: &Vec<Audit>| table(v, history_line),
        ),
    }
}

fn inspect(file: &Path, json: bool, engine: &EngineArgs) -> Result<ExitCode> {
    let plugin = engine.host()?.load_file(file)?;
    let info = plugin.info();
    let schema: Value =
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

fn push(file: &Path, fixtures: Option<&Path>, admin: &AdminArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
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
    admin.call(
        |c| async move {
            let pushed = c.push(bytes).await?;
            if let Some((input, expected)) = fixtures {
                c.put_fixtures(&pushed.plugin, input, expected).await?;
            }
            Ok(pushed)
        },
        |v: &Pushed| {
            let verb = if v.new { "stored" } else { "already stored" };
            format!("{} {} ({verb}, {} bytes)", v.plugin, v.sha256, v.size)
        },
    )
}

/// `thermostat@1.2.0  <sha256>  12345 B  by ops  live in thermostats`.
fn plugin_line(p: &PluginView) -> String {
    let u = &p.upload;
    format!(
        "{}@{}  {}  {:>8} B  by {}  {}",
        u.plugin.name,
        u.plugin.version,
        u.plugin.sha256,
        u.size,
        u.by,
        if p.cohorts.is_empty() {
            "-".to_owned()
        } else {
            format!("live in {}", p.cohorts.join(", "))
        }
    )
}

/// The first 12 characters of a digest.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// One audit entry: when, what, which version, by whom (and under which key), old → new.
fn history_line(a: &Audit) -> String {
    let what = match (&a.action, &a.cutover) {
        (Action::Cutover, Some(c)) => {
            format!("{} switched at message on {}", c.process, c.first_topic)
        }
        _ => format!(
            "{} → {}",
            a.old_sha256.as_deref().map_or("-", short),
            short(&a.new_sha256)
        ),
    };
    let signed = match &a.signer {
        Some(key) => format!(" (key {key})"),
        None => String::new(),
    };
    format!(
        "{}  {:<8}  {}  by {}{signed}  {what}",
        timestamp(a.at_ms),
        a.action.as_str(),
        a.plugin,
        a.by,
    )
}

/// A promote or rollback: the versions, the gate's and the swap's time, the cutover.
fn describe_change(v: &Promoted) -> String {
    let mut out = format!(
        "{}: {}@{} → {}@{} (sha256 {}); gate {} ms, live in {} ms",
        v.cohort,
        v.from.name,
        v.from.version,
        v.to.name,
        v.to.version,
        v.to.sha256,
        v.gate_ms,
        v.swap_ms,
    );
    match &v.cutover {
        Some(c) => out.push_str(&format!(
            "\ncutover: first message on {} at {}",
            c.first_topic,
            timestamp(c.at_ms)
        )),
        None => out.push_str("\ncutover: with the cohort's next message"),
    }
    out
}

/// A shadow run's counts, then each example with its field-level diff or its codes.
fn describe_shadow(v: &ShadowReport) -> String {
    let r = &v.report;
    let mut out = format!(
        "{}: {}@{} (live) vs {}@{} over {} messages{}\n  identical {}  different {}  live-rejected {}  candidate-rejected {}  candidate-failed {}  skipped {}",
        v.cohort,
        v.live.name,
        v.live.version,
        v.candidate.name,
        v.candidate.version,
        r.messages,
        if r.complete {
            ""
        } else {
            " (cut short at 10 minutes)"
        },
        r.identical,
        r.different,
        r.live_rejected,
        r.candidate_rejected,
        r.candidate_failed,
        r.skipped,
    );
    for e in &r.examples {
        out.push_str(&describe_example(e));
    }
    out
}

fn describe_example(e: &Example) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "\n{}: live {} / candidate {}",
        e.topic,
        text(&e.live["outcome"]),
        text(&e.candidate["outcome"]),
    );
    for d in &e.diff {
        let show = |x: &Option<Value>| x.as_ref().map_or("(absent)".to_owned(), Value::to_string);
        out.push_str(&format!(
            "\n    {}: {} → {}",
            d.field,
            show(&d.live),
            show(&d.candidate),
        ));
    }
    for (side, o) in [("live", &e.live), ("candidate", &e.candidate)] {
        if let Some(code) = o["code"].as_str() {
            out.push_str(&format!("\n    {side}: {code}: {}", text(&o["reason"])));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use weir::admin::api::{Action, Audit, Promoted, Version};

    fn version(v: &str, sha256: &str) -> Version {
        Version {
            name: "p".into(),
            version: v.into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn a_history_line_names_the_signing_key_and_shortens_digests() {
        let a = Audit {
            cohort: Some("t".into()),
            action: Action::Promote,
            plugin: "thermostat@1.1.0".into(),
            old_sha256: Some("a".repeat(64)),
            new_sha256: "b".repeat(64),
            at_ms: 0,
            by: "ops".into(),
            cutover: None,
            signer: Some("deploy".into()),
        };
        assert_eq!(
            super::history_line(&a),
            "1970-01-01T00:00:00.000Z  promote   thermostat@1.1.0  by ops (key deploy)  aaaaaaaaaaaa → bbbbbbbbbbbb"
        );
    }

    #[test]
    fn a_change_without_a_cutover_says_it_comes_with_the_next_message() {
        let v = Promoted {
            cohort: "t".into(),
            from: version("1", "r"),
            to: version("2", "s"),
            gate_ms: 5,
            swap_ms: 7,
            cutover: None,
        };
        assert_eq!(
            super::describe_change(&v),
            "t: p@1 → p@2 (sha256 s); gate 5 ms, live in 7 ms\ncutover: with the cohort's next message"
        );
    }
}
