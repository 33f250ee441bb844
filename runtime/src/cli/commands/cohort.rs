//! `weir cohort`: the cohorts of a running weir.

use crate::admin::{AdminArgs, table, timestamp};
use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;
use weir::admin::api::{CohortView, SlotView};

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
            |v: &Vec<CohortView>| table(v, cohort_line),
        ),
    }
}

/// `thermostats  thermostat@1.2.0  <sha256>  since … by ops  slots 0,3 here`.
fn cohort_line(c: &CohortView) -> String {
    format!(
        "{}  {}@{}  {}  {}",
        c.cohort,
        c.plugin.name,
        c.plugin.version,
        c.plugin.sha256,
        match c.since_ms {
            Some(ms) => format!(
                "since {} by {}",
                timestamp(ms),
                c.by.as_deref().unwrap_or("-")
            ),
            None => "pinned by weir.toml".to_owned(),
        },
    ) + &slots_summary(c.slots.as_deref())
}

/// `  slots 0,3 here; 1,4 at <process>` for a cohort view's `slots`, or nothing.
fn slots_summary(slots: Option<&[SlotView]>) -> String {
    let Some(slots) = slots else {
        return String::new();
    };
    let mut by: std::collections::BTreeMap<(bool, &str), Vec<String>> = Default::default();
    for s in slots {
        by.entry((!s.here, s.process.as_str()))
            .or_default()
            .push(s.slot.to_string());
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
    use weir::admin::api::SlotView;

    #[test]
    fn slots_are_grouped_by_holder_with_this_process_first() {
        let slot = |slot, here, process: &str| SlotView {
            slot,
            here,
            process: process.into(),
        };
        let v = [
            slot(1, false, "weir@b:2"),
            slot(0, true, "weir@a:1"),
            slot(3, true, "weir@a:1"),
        ];
        assert_eq!(
            super::slots_summary(Some(&v)),
            "  slots 0,3 here; 1 at weir@b:2"
        );
        assert_eq!(super::slots_summary(Some(&[])), "  slots: none held yet");
        assert_eq!(super::slots_summary(None), "");
    }
}
