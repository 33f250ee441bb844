//! Helpers shared by the runtime's integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A plugin component built by `cargo xtask plugins`: `name@version`, or `name` for the
/// crate's own (lowest) version.
pub fn plugin_wasm(id: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let mut dir = target.join("plugins");
    // Python and TypeScript plugins are built into directories of their own (`cargo
    // xtask plugins`); the tests' are named for their language.
    let name = id.split('@').next().unwrap_or(id);
    if name.ends_with("-py") {
        dir = dir.join("python");
    } else if name.ends_with("-ts") {
        dir = dir.join("typescript");
    }
    let path = match id.split_once('@') {
        Some((name, version)) => dir.join(format!("{name}-{version}.wasm")),
        None => {
            let prefix = format!("{id}-");
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(&prefix))
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                })
                .collect();
            found.sort();
            found
                .into_iter()
                .next()
                .unwrap_or_else(|| dir.join(format!("{id}-?.wasm")))
        }
    };
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `cargo xtask plugins`",
        path.display()
    );
    path
}

pub fn message(topic: &str, payload: &[u8]) -> weir::transform::Message {
    weir::transform::Message {
        topic: topic.into(),
        payload: payload.to_vec(),
        properties: vec![],
        content_type: None,
        received_at_ms: 0,
    }
}

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// An outcome as a short string, e.g. `emit:1` or `fail:plugin.trap`.
pub fn kind(o: &weir::transform::Outcome) -> String {
    use weir::transform::Outcome;
    match o {
        Outcome::Emit(r) => format!("emit:{}", r.len()),
        Outcome::Reject { code, .. } => format!("reject:{code}"),
        Outcome::Skip => "skip".into(),
        Outcome::Fail { code, .. } => format!("fail:{code}"),
    }
}

/// The adversarial plugin with a `memory_mib` cap, loaded and configured.
pub fn adversarial(memory_mib: usize) -> (weir::transform::Plugin, weir::transform::Configured) {
    adversarial_build("adversarial", memory_mib)
}

/// A build of the adversarial plugin (`adversarial@0.1.1` targets contract 1.1), with a
/// `memory_mib` cap, loaded and configured.
pub fn adversarial_build(
    id: &str,
    memory_mib: usize,
) -> (weir::transform::Plugin, weir::transform::Configured) {
    use weir::transform::{Host, Limits};
    let limits = Limits {
        memory_bytes: memory_mib << 20,
        ..Limits::default()
    };
    let plugin = Host::new(limits, None)
        .unwrap()
        .load_file(&plugin_wasm(id))
        .unwrap();
    let configured = plugin.configure(vec![], "adversarial").unwrap();
    (plugin, configured)
}

/// `component` as an older SDK built it: its contract imports (`weir:transform/host` and
/// `/types`, `@1.2.0`) renamed to `version`, a name of the same length, so that the
/// component stays well formed.
pub fn built_against(component: &[u8], version: &str) -> Vec<u8> {
    let mut out = component.to_vec();
    for interface in ["host", "types"] {
        let from = format!("weir:transform/{interface}@1.2.0");
        let to = format!("weir:transform/{interface}@{version}");
        assert_eq!(from.len(), to.len(), "a rename keeps the length");
        let (from, to) = (from.as_bytes(), to.as_bytes());
        let mut renamed = 0;
        let mut at = 0;
        while let Some(i) = out[at..].windows(from.len()).position(|w| w == from) {
            out[at + i..at + i + from.len()].copy_from_slice(to);
            renamed += 1;
            at += i + from.len();
        }
        assert!(
            renamed > 0,
            "the component imports weir:transform/{interface}@1.2.0"
        );
    }
    out
}
