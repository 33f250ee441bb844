//! `weir plugin`: inspect plugin files; push, promote, roll back and shadow versions in a
//! running weir; its audit trail.

use crate::admin::{AdminArgs, str_of, table, timestamp};
use crate::engine::EngineArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
        P::Push {
            file,
            fixtures,
            admin,
        } => push(&file, fixtures.as_deref(), &admin),
        P::List { admin } => admin.call(
            |c| async move { c.plugins().await },
            |v| table(v, plugin_line),
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
            |v| table(v, history_line),
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

/// `thermostat@1.2.0  <sha256>  12345 B  by ops  live in thermostats`.
fn plugin_line(p: &Value) -> String {
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
}

/// One audit entry: when, what, which version, by whom (and under which key), old → new.
fn history_line(a: &Value) -> String {
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
}

/// A promote or rollback: the versions, the gate's and the swap's time, the cutover.
fn describe_change(v: &Value) -> String {
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

/// A shadow run's counts, then each example with its field-level diff or its codes.
fn describe_shadow(v: &Value) -> String {
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
        out.push_str(&describe_example(e));
    }
    out
}

fn describe_example(e: &Value) -> String {
    let mut out = format!(
        "\n{}: live {} / candidate {}",
        str_of(&e["topic"]),
        str_of(&e["live"]["outcome"]),
        str_of(&e["candidate"]["outcome"]),
    );
    for d in e["diff"].as_array().into_iter().flatten() {
        let show = |x: Option<&Value>| x.map_or("(absent)".to_owned(), |x| x.to_string());
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
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_history_line_names_the_signing_key_and_shortens_digests() {
        let a = json!({
            "at_ms": 0, "action": "promote", "plugin": "thermostat@1.1.0", "by": "ops",
            "signer": "deploy", "old_sha256": "a".repeat(64), "new_sha256": "b".repeat(64),
        });
        assert_eq!(
            super::history_line(&a),
            "1970-01-01T00:00:00.000Z  promote   thermostat@1.1.0  by ops (key deploy)  aaaaaaaaaaaa → bbbbbbbbbbbb"
        );
    }

    #[test]
    fn a_change_without_a_cutover_says_it_comes_with_the_next_message() {
        let v = json!({
            "cohort": "t", "from": {"name": "p", "version": "1"},
            "to": {"name": "p", "version": "2", "sha256": "s"}, "gate_ms": 5, "swap_ms": 7,
        });
        assert_eq!(
            super::describe_change(&v),
            "t: p@1 → p@2 (sha256 s); gate 5 ms, live in 7 ms\ncutover: with the cohort's next message"
        );
    }
}
