//! `weir cohort`: the cohorts of a running weir.

use crate::admin::{AdminArgs, str_of, table, timestamp};
use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum CohortCommand {
    /// Each cohort, the plugin version it runs (name@version and sha256), since when and by
    /// which token.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn execute(command: CohortCommand) -> Result<ExitCode> {
    match command {
        CohortCommand::List { admin } => admin.call(
            |c| async move { c.cohorts().await },
            |v| table(v, cohort_line),
        ),
    }
}

/// `thermostats  thermostat@1.2.0  <sha256>  since … by ops  slots 0,3 here`.
fn cohort_line(c: &serde_json::Value) -> String {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn slots_are_grouped_by_holder_with_this_process_first() {
        let v = json!([
            {"slot": 1, "here": false, "process": "weir@b:2"},
            {"slot": 0, "here": true, "process": "weir@a:1"},
            {"slot": 3, "here": true, "process": "weir@a:1"},
        ]);
        assert_eq!(super::slots_summary(&v), "  slots 0,3 here; 1 at weir@b:2");
        assert_eq!(super::slots_summary(&json!([])), "  slots: none held yet");
        assert_eq!(super::slots_summary(&json!(null)), "");
    }
}
