//! One file per `weir` subcommand: its clap arguments and its `execute`.

pub mod cohort;
pub mod plugin;
pub mod quarantine;
pub mod registry;
pub mod replay;
pub mod run;
pub mod scaffold;
pub mod transform;
