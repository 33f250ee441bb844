//! `weir plugin new`: a new plugin's files, in Rust, Python or TypeScript — the transform,
//! its Avro schema, fixtures and native tests — that build and pass as they are, for the
//! author to change.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A plugin language `weir plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate built with `cargo xtask plugins` (add it to the workspace's members).
    Rust,
    /// A package built with `cargo xtask plugins` (componentize-py), tested with pytest.
    Python,
    /// A package built with `cargo xtask plugins` (esbuild, componentize-js), tested with
    /// Node's test runner.
    Typescript,
}

/// The plugin's names in each spelling it needs.
struct Names {
    /// `door-sensor`: the plugin, the package, the schema file.
    name: String,
    /// `door_sensor`: the Python module, the Rust crate's library.
    module: String,
    /// `DoorSensor`: the plugin's type.
    class: String,
}

impl Names {
    fn of(name: &str) -> Result<Names> {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !valid {
            bail!(
                "plugin name {name:?}: use lowercase letters, digits and single hyphens, starting with a letter (e.g. door-sensor)"
            );
        }
        // The name becomes a module: it must not hide a module the plugin or the SDK
        // imports, nor be a keyword.
        const TAKEN: [&str; 22] = [
            "json",
            "random",
            "time",
            "os",
            "sys",
            "math",
            "typing",
            "re",
            "string",
            "types",
            "test",
            "datetime",
            "collections",
            "enum",
            "dataclasses",
            "traceback",
            "base64",
            "pathlib",
            "weir",
            "class",
            "import",
            "pytest",
        ];
        if TAKEN.contains(&name) {
            bail!(
                "plugin name {name:?} would hide a module of that name (or is a keyword); choose a more specific one (e.g. {name}-sensor)"
            );
        }
        Ok(Names {
            name: name.to_owned(),
            module: name.replace('-', "_"),
            class: name
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect(),
        })
    }

    fn fill(&self, template: &str, sdk: &str) -> String {
        template
            .replace("@NAME@", &self.name)
            .replace("@MODULE@", &self.module)
            .replace("@CLASS@", &self.class)
            .replace("@SDK@", sdk)
    }
}

const SCHEMA: &str = r#"{
  "type": "record",
  "name": "@CLASS@Reading",
  "namespace": "io.weir.plugins.@MODULE@",
  "doc": "One reading of a @NAME@ device.",
  "fields": [
    {"name": "device_id", "type": "string", "doc": "The last level of the MQTT topic."},
    {"name": "value", "type": "double", "doc": "The reading."},
    {"name": "unit", "type": "string", "doc": "The unit, from the cohort's config (default C)."}
  ]
}
"#;

const FIXTURES_INPUT: &str = r#"{"topic":"site/1/@NAME@/d-1","payload":"{\"value\":21.5}"}
{"topic":"site/1/@NAME@/d-2","payload":"{\"heartbeat\":true}"}
{"topic":"site/1/@NAME@/d-3","payload":"{}"}
"#;

const FIXTURES_EXPECTED: &str = r#"{"outcome":"emit","records":[{"key":null,"value":{"device_id":"d-1","value":21.5,"unit":"C"},"headers":{}}]}
{"outcome":"skip"}
{"outcome":"reject","code":"reading.missing","reason":"no reading: expected a JSON object with a numeric `value`"}
"#;

const PYPROJECT: &str = r#"[project]
name = "@NAME@"
version = "0.1.0"
description = "weir plugin: @NAME@ readings"
requires-python = ">=3.11"

# How `cargo xtask plugins` builds it: the class to export and the Avro schema it emits.
[tool.weir]
plugin = "@MODULE@:@CLASS@"
schema = "@NAME@.avsc"

[tool.pytest.ini_options]
pythonpath = [".", "@SDK@"]
"#;

const PYTHON: &str = r#""""@NAME@: a device's JSON reading into one record (`@NAME@.avsc`).

The device id is the last topic level; `{"heartbeat": true}` is skipped; a payload without
a numeric `value` is rejected. Config: `unit` (default "C").
"""

from weir_sdk import SKIP, Plugin, Rejection


class @CLASS@(Plugin):
    def __init__(self, config):
        self.unit = config.get("unit", "C")

    def transform(self, message):
        reading = message.json()
        if not isinstance(reading, dict):
            raise Rejection("payload.malformed", "expected a JSON object")
        if reading.get("heartbeat") is True:
            return SKIP
        value = reading.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Rejection(
                "reading.missing", "no reading: expected a JSON object with a numeric `value`"
            )
        return {"device_id": message.topic_level(-1), "value": float(value), "unit": self.unit}
"#;

const PYTHON_TEST: &str = r#""""@NAME@'s native tests: plain pytest, no Wasm, no weir."""

from pathlib import Path

from weir_sdk import Config, Message

from @MODULE@ import @CLASS@


def test_fixtures():
    from weir_sdk.testing import check_fixtures

    check_fixtures(@CLASS@, Path(__file__).parent / "fixtures")


def test_the_unit_comes_from_the_config():
    plugin = @CLASS@(Config([("unit", "F")]))
    assert plugin.transform(Message("a/d-9", '{"value": 70}'))["unit"] == "F"
"#;

const PACKAGE_JSON: &str = r#"{
  "name": "@NAME@",
  "version": "0.1.0",
  "description": "weir plugin: @NAME@ readings",
  "private": true,
  "type": "module",
  "weir": {
    "plugin": "@NAME@.ts:@CLASS@",
    "schema": "@NAME@.avsc"
  }
}
"#;

const TYPESCRIPT: &str = r#"/**
 * @NAME@: a device's JSON reading into one record (`@NAME@.avsc`).
 *
 * The device id is the last topic level; `{"heartbeat": true}` is skipped; a payload
 * without a numeric `value` is rejected. Config: `unit` (default "C").
 */

import { Config, Message, Plugin, Rejection, SKIP } from "weir-sdk";

export class @CLASS@ implements Plugin {
  readonly unit: string;

  constructor(config: Config) {
    this.unit = config.get("unit", "C");
  }

  transform(message: Message) {
    const reading = message.json();
    if (typeof reading !== "object" || reading === null || Array.isArray(reading)) {
      throw new Rejection("payload.malformed", "expected a JSON object");
    }
    const r = reading as { [k: string]: unknown };
    if (r.heartbeat === true) return SKIP;
    if (typeof r.value !== "number") {
      throw new Rejection("reading.missing", "no reading: expected a JSON object with a numeric `value`");
    }
    return { device_id: message.topicLevel(-1), value: r.value, unit: this.unit };
  }
}
"#;

const TYPESCRIPT_TEST: &str = r#"// @NAME@'s native tests: Node's test runner, no Wasm, no weir. Run from this directory.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Config, Message } from "weir-sdk";
import { checkFixtures } from "weir-sdk/testing";
import { @CLASS@ } from "./@NAME@";

test("fixtures", () => checkFixtures(@CLASS@, "fixtures"));

test("the unit comes from the config", () => {
  const plugin = new @CLASS@(new Config([["unit", "F"]]));
  assert.equal((plugin.transform(new Message("a/d-9", '{"value": 70}')) as any).unit, "F");
});
"#;

const CARGO: &str = r#"[package]
name = "@NAME@"
description = "weir plugin: @NAME@ readings"
version = "0.1.0"
edition.workspace = true
license.workspace = true
rust-version.workspace = true
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk.workspace = true
serde.workspace = true

[lints]
workspace = true
"#;

const RUST: &str = r#"//! @NAME@: a device's JSON reading into one record (`@NAME@.avsc`).
//!
//! The device id is the last topic level; `{"heartbeat": true}` is skipped; a payload
//! without a numeric `value` is rejected. Config: `unit` (default "C").

use serde::{Deserialize, Serialize};
use weir_sdk::{Config, Emit, Message, Plugin, Rejection};

/// The record (schema: `@NAME@.avsc`). Its text is borrowed from the message and the
/// plugin (`'m`), not copied: a copy is an allocation, the dearest thing in a small record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading<'m> {
    pub device_id: &'m str,
    pub value: f64,
    pub unit: &'m str,
}

#[derive(Deserialize)]
struct Payload {
    value: Option<f64>,
    #[serde(default)]
    heartbeat: bool,
}

/// The plugin: the unit from config.
#[derive(Debug)]
pub struct @CLASS@ {
    unit: String,
}

impl Plugin for @CLASS@ {
    type Record<'m> = Reading<'m>;

    fn init(config: &Config) -> Result<Self, String> {
        Ok(@CLASS@ {
            unit: config.get("unit").unwrap_or("C").to_owned(),
        })
    }

    fn transform<'m>(&'m self, msg: &'m Message) -> weir_sdk::Result<Reading<'m>> {
        let p: Payload = msg.json()?;
        if p.heartbeat {
            return Ok(Emit::Skip);
        }
        let Some(value) = p.value else {
            return Err(Rejection::new(
                "reading.missing",
                "no reading: expected a JSON object with a numeric `value`",
            ));
        };
        Ok(Emit::one(Reading {
            device_id: msg.topic.rsplit('/').next().unwrap_or_default(),
            value,
            unit: &self.unit,
        }))
    }
}

weir_sdk::export_plugin!(@CLASS@, schema = "../@NAME@.avsc");

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::check_fixtures;

    #[test]
    fn fixtures() {
        check_fixtures::<@CLASS@>(
            &Config::default(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"),
        );
    }
}
"#;

/// The files of a new `lang` plugin called `name`, relative to its directory. `sdk` is the
/// Python SDK's directory as the plugin's directory sees it.
fn files(name: &str, lang: Lang, sdk: &str) -> Result<Vec<(PathBuf, String)>> {
    let n = Names::of(name)?;
    let mut out = vec![
        (PathBuf::from(format!("{name}.avsc")), n.fill(SCHEMA, sdk)),
        ("fixtures/input.jsonl".into(), n.fill(FIXTURES_INPUT, sdk)),
        (
            "fixtures/expected.jsonl".into(),
            n.fill(FIXTURES_EXPECTED, sdk),
        ),
    ];
    match lang {
        Lang::Python => out.extend([
            ("pyproject.toml".into(), n.fill(PYPROJECT, sdk)),
            (format!("{}.py", n.module).into(), n.fill(PYTHON, sdk)),
            (
                format!("test_{}.py", n.module).into(),
                n.fill(PYTHON_TEST, sdk),
            ),
        ]),
        Lang::Rust => out.extend([
            ("Cargo.toml".into(), n.fill(CARGO, sdk)),
            ("src/lib.rs".into(), n.fill(RUST, sdk)),
        ]),
        Lang::Typescript => out.extend([
            ("package.json".into(), n.fill(PACKAGE_JSON, sdk)),
            (format!("{name}.ts").into(), n.fill(TYPESCRIPT, sdk)),
            (
                format!("{name}.test.ts").into(),
                n.fill(TYPESCRIPT_TEST, sdk),
            ),
        ]),
    }
    Ok(out)
}

/// The Python SDK (`sdk/python`) as seen from `dir`: relative when `dir` is inside a weir
/// checkout, found by walking up from it.
fn python_sdk(dir: &Path) -> String {
    let mut up = PathBuf::new();
    for ancestor in dir.ancestors().skip(1) {
        up.push("..");
        if ancestor.join("sdk/python/weir_sdk").is_dir() {
            return up.join("sdk/python").display().to_string();
        }
    }
    "sdk/python".into()
}

/// Write a new plugin into `dir` (which must not exist yet); the files written.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.exists() {
        bail!(
            "{} already exists; give a new directory (--dir)",
            dir.display()
        );
    }
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut written = Vec::new();
    for (path, text) in files(name, lang, &python_sdk(&absolute))? {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// What to do next, for the author.
pub fn next_steps(name: &str, lang: Lang, dir: &Path) -> String {
    let dir = dir.display();
    let build = |out: &str| {
        format!(
            "next:\n  cargo xtask plugin-test {dir}         # its native tests\n  cargo xtask plugin {dir} {out}   # builds {out}/{name}-0.1.0.wasm\n  weir transform --plugin {out}/{name}-0.1.0.wasm --input {dir}/fixtures/input.jsonl\n(in plugins/, `cargo xtask plugins` and `cargo xtask plugin-tests` include it)"
        )
    };
    match lang {
        Lang::Python => build("target/plugins/python"),
        Lang::Typescript => build("target/plugins/typescript"),
        Lang::Rust => format!(
            "next:\n  add \"{dir}\" to [workspace] members in Cargo.toml (weir's, or a workspace of its own)\n  cargo xtask plugin-test {dir}         # its native tests\n  cargo xtask plugin {dir} target/plugins   # builds target/plugins/{name}-0.1.0.wasm\n  weir transform --plugin target/plugins/{name}-0.1.0.wasm --input {dir}/fixtures/input.jsonl\n(in weir's workspace, `cargo xtask plugins` includes it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_spelled_for_each_language() {
        let n = Names::of("door-sensor2").unwrap();
        assert_eq!(
            (n.module.as_str(), n.class.as_str()),
            ("door_sensor2", "DoorSensor2")
        );
        for bad in [
            "",
            "Door",
            "2door",
            "door_sensor",
            "door-",
            "a--b",
            "a b",
            "é",
            "json",
            "random",
        ] {
            assert!(Names::of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Typescript] {
            for (path, text) in files("door-sensor", lang, "../../sdk/python").unwrap() {
                for placeholder in ["@NAME@", "@MODULE@", "@CLASS@", "@SDK@"] {
                    assert!(
                        !text.contains(placeholder),
                        "{}: {placeholder}",
                        path.display()
                    );
                }
            }
        }
        let py = files("door-sensor", Lang::Python, "../../sdk/python").unwrap();
        let names: Vec<String> = py.iter().map(|(p, _)| p.display().to_string()).collect();
        assert!(names.contains(&"door_sensor.py".to_owned()), "{names:?}");
        assert!(
            py.iter()
                .any(|(_, t)| t.contains(r#"plugin = "door_sensor:DoorSensor""#))
        );
    }

    #[test]
    fn the_sdk_is_found_relative_to_a_checkout() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sdk/python/weir_sdk")).unwrap();
        let dir = root.path().join("plugins/door-sensor");
        assert_eq!(python_sdk(&dir), "../../sdk/python");
    }
}
