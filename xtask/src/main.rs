//! `cargo xtask imports`: fail on an import circle between the `weir` crate's modules
//! (`imports.rs`).
//!
//! `cargo xtask plugin-tests`: run the Python and TypeScript SDKs' and plugins' native
//! tests (pytest; Node's test runner).
//!
//! `cargo xtask plugin DIR OUT` / `cargo xtask plugin-test DIR`: build one Rust, Python or
//! TypeScript plugin, or run its native tests, wherever it is (a Rust crate within a Cargo
//! workspace that defines the `plugin` profile, as weir's does).
//!
//! `cargo xtask plugins [--release-dir DIR]`: build every plugin in `plugins/` and
//! `tests/plugins/` to a Wasm component in `target/plugins/<name>-<version>.wasm` (and each
//! extra version a crate lists in `[package.metadata.weir.versions]`, built with its feature).
//!
//! Python plugins (a `pyproject.toml` with `[tool.weir]`) are built with componentize-py
//! into `target/plugins/python/` (`python.rs`), TypeScript ones (a `package.json` with a
//! `weir` field) with esbuild and componentize-js into `target/plugins/typescript/`
//! (`typescript.rs`): apart, because a component with an
//! interpreter in it takes seconds to compile when weir first loads it, and weir loads every
//! file of its `plugins.dir` (a deployment's directory holds what it runs).
//!
//! Plugins are compiled for `wasm32-unknown-unknown` and turned into components with
//! `wit-component`, rather than built for `wasm32-wasip2`: a wasip2 binary imports a dozen
//! WASI interfaces (clocks, random, filesystem, ...) even when it uses none, and weir grants
//! a plugin nothing but `log`. Built this way, the component imports exactly the contract.

#![forbid(unsafe_code)]

mod imports;
mod python;
mod typescript;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "plugin";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(),
        Some("plugin-tests") => python::test(&workspace_root(), &target_dir())
            .and_then(|()| typescript::test(&workspace_root(), &target_dir())),
        Some("plugin-test") if args.len() == 2 => {
            let dir = PathBuf::from(&args[1]);
            if dir.join("Cargo.toml").exists() {
                rust_test(&dir, &target_dir())
            } else if dir.join("package.json").exists() {
                typescript::test_dir(&workspace_root(), &target_dir(), &dir)
            } else {
                python::test_dir(&target_dir(), &dir)
            }
        }
        Some("plugin") if args.len() == 3 => {
            let (dir, out_dir) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
            let (root, target) = (workspace_root(), target_dir());
            let out = if dir.join("Cargo.toml").exists() {
                rust_build(&dir, &target, &out_dir)?
            } else if dir.join("package.json").exists() {
                typescript::build(&root, &target, &out_dir, &typescript::read(&dir)?)?
            } else {
                let plugin = python::read(&dir)?;
                python::build(&root, &target, &out_dir, &plugin)?
            };
            println!("{}", out.display());
            Ok(())
        }
        Some("imports") => imports::check(
            &args
                .get(1)
                .map_or_else(|| workspace_root().join("runtime/src"), PathBuf::from),
        ),
        _ => {
            eprintln!(
                "usage: cargo xtask plugins|plugin-tests|plugin-test|plugin|imports\n\n  plugins   build every plugin (plugins/*, tests/plugins/*) to target/plugins/<name>-<version>.wasm\n  plugin-tests   run the Python and TypeScript SDKs' and plugins' native tests\n  plugin-test DIR  run the native tests of the Rust, Python or TypeScript plugin in DIR\n  plugin DIR OUT   build the Rust, Python or TypeScript plugin in DIR into OUT/<name>-<version>.wasm\n  imports [SRC]   fail on an import circle between the modules of runtime/src (or SRC)"
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

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// One plugin crate and the versions it builds.
struct Package {
    name: String,
    /// `(version, cargo feature)`: the crate's own version (no feature), then any listed in
    /// `[package.metadata.weir.versions]`.
    versions: Vec<(String, Option<String>)>,
}

/// The directories in `plugins/` and `tests/plugins/` that hold a `manifest` file
/// (`Cargo.toml`, `pyproject.toml`, `package.json`), in order.
fn plugin_dirs(root: &Path, manifest: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for parent in ["plugins", "tests/plugins"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(parent))
            .with_context(|| format!("reading {parent}/"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        dirs.sort();
        found.extend(dirs.into_iter().filter(|d| d.join(manifest).exists()));
    }
    Ok(found)
}

/// Every plugin crate in `plugins/` and `tests/plugins/`.
fn plugin_packages(root: &Path) -> Result<Vec<Package>> {
    plugin_dirs(root, "Cargo.toml")?
        .iter()
        .map(|dir| read_package(dir))
        .collect()
}

/// The plugin crate in `dir`: its name, and the versions it builds.
fn read_package(dir: &Path) -> Result<Package> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", manifest.display()))?;
    let package = doc
        .get("package")
        .with_context(|| format!("{} has no [package]", manifest.display()))?;
    let field = |key: &str| {
        package
            .get(key)
            .and_then(|n| n.as_str())
            .map(str::to_owned)
            .with_context(|| format!("{} needs a literal package.{key}", manifest.display()))
    };
    let mut versions = vec![(field("version")?, None)];
    if let Some(extra) = package
        .get("metadata")
        .and_then(|m| m.get("weir"))
        .and_then(|w| w.get("versions"))
        .and_then(|v| v.as_table())
    {
        for (version, feature) in extra {
            let feature = feature.as_str().with_context(|| {
                format!(
                    "{}: package.metadata.weir.versions.\"{version}\" must name a cargo feature",
                    manifest.display()
                )
            })?;
            versions.push((version.clone(), Some(feature.to_owned())));
        }
    }
    Ok(Package {
        name: field("name")?,
        versions,
    })
}

/// `cargo test` for the plugin crate in `dir` (its native tests, fixtures included).
fn rust_test(dir: &Path, target_dir: &Path) -> Result<()> {
    cargo_in(dir, target_dir, &["test"])
        .with_context(|| format!("{}: the plugin's tests failed", dir.display()))
}

/// Build the plugin crate in `dir` (its own version) into `out_dir/<name>-<version>.wasm`.
fn rust_build(dir: &Path, target_dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    let p = read_package(dir)?;
    cargo_in(
        dir,
        target_dir,
        &["build", "--target", TARGET, "--profile", PROFILE],
    )
    .with_context(|| format!("{}: building the plugin failed", dir.display()))?;
    std::fs::create_dir_all(out_dir)?;
    let out = out_dir.join(format!("{}-{}.wasm", p.name, p.versions[0].0));
    std::fs::write(&out, component(target_dir, &p.name)?)?;
    Ok(out)
}

/// `cargo ARGS --target-dir TARGET_DIR` run in `dir` (the crate there, in its workspace).
fn cargo_in(dir: &Path, target_dir: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(dir)
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} ended with {status}", args.join(" "));
    }
    Ok(())
}

/// The component of plugin crate `name`, from its module as built in `target_dir`.
fn component(target_dir: &Path, name: &str) -> Result<Vec<u8>> {
    let core = target_dir
        .join(TARGET)
        .join(PROFILE)
        .join(format!("{}.wasm", name.replace('-', "_")));
    let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{name}: reading the module's component-type section"))?
        .validate(true)
        .encode()
        .with_context(|| format!("{name}: encoding the component"))
}

/// Crates built together, and the `(version, feature)` they are built as (none: their own).
type Build<'a> = (Vec<&'a Package>, Option<(&'a str, &'a str)>);

fn build_plugins() -> Result<()> {
    let root = workspace_root();
    let packages = plugin_packages(&root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = target_dir();
    let out_dir = target_dir.join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    // Every crate's own version in one build; then each extra version, one feature at a
    // time (they overwrite the crate's module, so each is encoded before the next build).
    let mut builds: Vec<Build> = vec![(packages.iter().collect(), None)];
    for p in &packages {
        for (version, feature) in &p.versions {
            if let Some(f) = feature {
                builds.push((vec![p], Some((version, f))));
            }
        }
    }
    for (members, variant) in builds {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(["build", "--target", TARGET, "--profile", PROFILE]);
        for p in &members {
            cmd.args(["--package", &p.name]);
        }
        if let Some((_, feature)) = variant {
            cmd.args(["--features", feature]);
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("building the plugins failed ({status})");
        }
        for p in members {
            let version = variant.map_or(p.versions[0].0.as_str(), |(v, _)| v);
            let component = component(&target_dir, &p.name)?;
            let out = out_dir.join(format!("{}-{version}.wasm", p.name));
            std::fs::write(&out, &component)?;
            println!("{:>8} bytes  {}", component.len(), out.display());
        }
    }
    // Interpreter components apart: each takes seconds to compile when weir first loads it,
    // and weir loads every file of its plugins.dir.
    let python_dir = out_dir.join("python");
    std::fs::create_dir_all(&python_dir)?;
    for p in python::find(&root)? {
        let out = python::build(&root, &target_dir, &python_dir, &p)?;
        println!(
            "{:>8} bytes  {}",
            std::fs::metadata(&out)?.len(),
            out.display()
        );
    }
    let typescript_dir = out_dir.join("typescript");
    std::fs::create_dir_all(&typescript_dir)?;
    for p in typescript::find(&root)? {
        let out = typescript::build(&root, &target_dir, &typescript_dir, &p)?;
        println!(
            "{:>8} bytes  {}",
            std::fs::metadata(&out)?.len(),
            out.display()
        );
    }
    Ok(())
}
