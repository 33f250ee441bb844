//! `cargo xtask plugins [--release-dir DIR]`: build every plugin in `plugins/` and
//! `tests/plugins/` to a Wasm component in `target/plugins/<name>.wasm`.
//!
//! Plugins are compiled for `wasm32-unknown-unknown` and turned into components with
//! `wit-component`, rather than built for `wasm32-wasip2`: a wasip2 binary imports a dozen
//! WASI interfaces (clocks, random, filesystem, ...) even when it uses none, and weir grants
//! a plugin nothing but `log`. Built this way, the component imports exactly the contract.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "plugin";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(),
        _ => {
            eprintln!(
                "usage: cargo xtask plugins\n\n  plugins   build every plugin (plugins/*, tests/plugins/*) to target/plugins/<name>.wasm"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Package names of every plugin crate.
fn plugin_packages(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for dir in ["plugins", "tests/plugins"] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .with_context(|| format!("reading {dir}/"))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let manifest = entry.path().join("Cargo.toml");
            if !manifest.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&manifest)?;
            let doc: toml::Table = text
                .parse()
                .with_context(|| format!("parsing {}", manifest.display()))?;
            let name = doc
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .with_context(|| format!("{} has no package.name", manifest.display()))?;
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn build_plugins() -> Result<()> {
    let root = workspace_root();
    let packages = plugin_packages(&root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", TARGET, "--profile", PROFILE]);
    for p in &packages {
        cmd.args(["--package", p]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the plugins failed ({status})");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out_dir = target_dir.join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    for p in &packages {
        let core = target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", p.replace('-', "_")));
        let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .with_context(|| format!("{p}: reading the module's component-type section"))?
            .validate(true)
            .encode()
            .with_context(|| format!("{p}: encoding the component"))?;
        let out = out_dir.join(format!("{p}.wasm"));
        std::fs::write(&out, &component)?;
        println!("{:>8} bytes  {}", component.len(), out.display());
    }
    Ok(())
}
