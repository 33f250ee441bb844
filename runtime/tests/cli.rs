//! The `weir` binary: `plugin inspect` and `transform` over every plugin's fixtures.

mod common;

use common::{plugin_wasm, root};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn weir(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_NO_CACHE", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `weir transform` over a plugin's fixtures prints exactly `expected.jsonl`.
fn check_fixtures(plugin: &str) {
    check_fixtures_of(plugin, plugin);
}

/// `weir transform` with `plugin` over `fixtures`' fixtures prints `expected.jsonl`; the
/// reason of a `payload.malformed` rejection (a JSON parser's own words, which differ
/// between plugin languages) is not compared, its code is.
fn check_fixtures_of(plugin: &str, fixtures: &str) {
    let dir = root().join("plugins").join(fixtures).join("fixtures");
    let wasm = plugin_wasm(plugin);
    let input = dir.join("input.jsonl");
    let out = weir(
        &[
            "transform",
            "--plugin",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let got: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{plugin}: line count");
    let comparable = |v: &serde_json::Value| {
        let mut v = v.clone();
        if v["code"] == "payload.malformed" {
            v.as_object_mut().unwrap().remove("reason");
        }
        v
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            comparable(g),
            comparable(w),
            "{plugin} fixture line {}",
            i + 1
        );
    }
}

#[test]
fn transform_thermostat_fixtures() {
    check_fixtures("thermostat");
}

/// The Python thermostat is held to the Rust one's fixtures.
#[test]
fn transform_thermostat_py_fixtures() {
    check_fixtures_of("thermostat-py", "thermostat");
}

/// The TypeScript thermostat is held to the Rust one's fixtures.
#[test]
fn transform_thermostat_ts_fixtures() {
    check_fixtures_of("thermostat-ts", "thermostat");
}

#[test]
fn transform_fleet_gps_fixtures() {
    check_fixtures("fleet-gps");
}

#[test]
fn transform_meter_fixtures() {
    check_fixtures("meter");
}

#[test]
fn bad_input_lines_are_reported_and_the_rest_still_run() {
    let wasm = plugin_wasm("thermostat");
    let input = concat!(
        "{\"topic\":\"a/t-1\",\"payload\":\"{\\\"temp_c\\\":20}\"}\n",
        "this is not json\n",
        "{\"topic\":\"a/t-2\"}\n",
        "{\"topic\":\"a/t-3\",\"payload\":\"{\\\"temp_c\\\":21}\",\"properties\":{\"fw\":\"1\"}}\n",
    );
    let out = weir(&["transform", "--plugin", wasm.to_str().unwrap()], input);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["outcome"], "emit");
    assert_eq!(lines[1]["outcome"], "fail");
    assert_eq!(lines[1]["code"], "input.invalid");
    assert!(lines[1]["reason"].as_str().unwrap().contains("line 2"));
    assert!(lines[2]["reason"].as_str().unwrap().contains("payload"));
    assert_eq!(lines[3]["records"][0]["value"]["temperature_c"], 21.0);
    assert!(text(&out.stderr).contains("2 of 4 input lines were invalid"));
}

#[test]
fn adversarial_plugin_through_the_cli() {
    let wasm = plugin_wasm("adversarial");
    let input = ["ok", "panic", "loop", "badschema", "fine"]
        .map(|p| format!("{{\"topic\":\"t\",\"payload\":\"{p}\"}}\n"))
        .concat();
    let out = weir(&["transform", "--plugin", wasm.to_str().unwrap()], &input);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let codes: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("code")
                .and_then(|c| c.as_str())
                .unwrap_or(v["outcome"].as_str().unwrap())
                .to_owned()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "emit",
            "plugin.trap",
            "plugin.timeout",
            "schema.violation",
            "emit"
        ]
    );
}

/// A plugin's log lines cannot forge weir's (a newline is escaped, not a new line), and a
/// plugin that logs a thousand lines in a call is held to its rate.
#[test]
fn plugin_log_lines_are_escaped_and_rate_limited() {
    let wasm = plugin_wasm("adversarial");
    // 40 calls of 50 lines each: under any per-call cap, 2,000 lines in all.
    let mut modes = vec!["forge", "chatty"];
    modes.extend(std::iter::repeat_n("murmur", 40));
    let input = modes
        .iter()
        .map(|p| format!("{{\"topic\":\"t\",\"payload\":\"{p}\"}}\n"))
        .collect::<String>();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["transform", "--plugin", wasm.to_str().unwrap()])
        .env("WEIR_LOG", "info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(input.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let seconds = started.elapsed().as_secs() + 1;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        !err.lines()
            .any(|l| l.contains("FORGED") && !l.contains("innocent")),
        "a forged line stands alone: {err}"
    );
    assert!(err.contains("innocent\\n2026"), "{err}");
    // 100 lines a second for the plugin, across its calls: whatever the run took, far
    // fewer than the 3,000 lines asked for.
    let plugin_lines = err
        .lines()
        .filter(|l| l.contains("chatty line") || l.contains("murmur line"))
        .count();
    assert!(
        (1..=(100 * seconds as usize + 1)).contains(&plugin_lines),
        "{plugin_lines} plugin lines in {seconds} s"
    );
    assert!(
        err.lines().filter(|l| l.contains("murmur line")).count() < 40 * 50,
        "every murmur line was logged"
    );
    assert_eq!(text(&out.stdout).lines().count(), modes.len());
}

#[test]
fn inspect_prints_identity_and_schema() {
    let wasm = plugin_wasm("fleet-gps");
    let out = weir(&["plugin", "inspect", "--json", wasm.to_str().unwrap()], "");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "fleet-gps");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["contract"], "weir:transform@1.2.0 (framed-plugin)");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["schema"]["name"], "VehiclePosition");
    let human = weir(&["plugin", "inspect", wasm.to_str().unwrap()], "");
    assert!(text(&human.stdout).contains("version:   1.0.0"));
}

#[test]
fn non_plugins_get_a_one_line_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("notes.txt", b"hello".to_vec(), "not a WebAssembly file"),
        (
            "core.wasm",
            wat::parse_str("(module)").unwrap(),
            "core Wasm module",
        ),
        (
            "other.wasm",
            wat::parse_str("(component)").unwrap(),
            "not a weir plugin",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        for args in [
            vec!["plugin", "inspect", path.to_str().unwrap()],
            vec!["transform", "--plugin", path.to_str().unwrap()],
        ] {
            let out = weir(&args, "");
            let err = text(&out.stderr);
            assert!(!out.status.success(), "{name}: {args:?} succeeded");
            assert!(err.contains(expect), "{name}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{name}: not one line: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let missing = weir(&["plugin", "inspect", "/nonexistent.wasm"], "");
    assert!(text(&missing.stderr).contains("cannot read /nonexistent.wasm"));
}

/// `weir replay --to` a topic weir run uses is refused before anything is read or
/// written, naming the key; `--allow-live-topic` is the deliberate way past it.
#[test]
fn replay_into_a_live_topic_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        r#"
[mqtt]
url = "mqtt://127.0.0.1:1"
subscriptions = ["plant/#"]
[kafka]
bootstrap = "127.0.0.1:1"
[registry]
url = "http://127.0.0.1:1"
[output]
raw_topic = "weir.raw"
[plugins]
dir = "plugins"
[[cohort]]
name = "t"
topic = "plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "telemetry.thermostat"
"#,
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    for (args, key) in [
        (
            vec!["--to", "telemetry.thermostat"],
            "cohort[0].output_topic",
        ),
        (vec!["--to", "weir.raw"], "output.raw_topic"),
        (vec!["--to", "weir.control"], "plugins.control_topic"),
        (
            vec!["--to", "fresh", "--quarantine-to", "weir.quarantine"],
            "output.quarantine_topic",
        ),
    ] {
        let mut all = vec!["replay", "--config", cfg, "--from", "weir.raw"];
        all.extend(args);
        let out = weir(&all, "");
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{all:?} was not refused");
        assert!(err.contains(key), "{all:?}: {err}");
        assert!(err.contains("--allow-live-topic"), "{err}");
    }
}

/// `cargo xtask ARGS` from the workspace root: whether it succeeded, and its output.
fn xtask(args: &[&std::ffi::OsStr]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(["run", "--quiet", "-p", "xtask", "--"])
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// `weir plugin new --lang LANG` writes a plugin that passes its own native tests, builds
/// to a component, and holds to its fixtures in `weir transform`.
fn a_new_plugin_passes_its_tests_builds_and_holds_to_its_fixtures(lang: &str) {
    let work = root().join("target/scaffold-tests");
    std::fs::create_dir_all(&work).unwrap();
    let work = tempfile::tempdir_in(work).unwrap();
    let dir = work.path().join("door-sensor");
    let new = [
        "plugin",
        "new",
        "door-sensor",
        "--lang",
        lang,
        "--dir",
        dir.to_str().unwrap(),
    ];
    let out = weir(&new, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cargo xtask plugin-test "),
        "{}",
        text(&out.stdout)
    );
    // Again into the same directory: refused, nothing overwritten.
    let again = weir(&new, "");
    assert!(!again.status.success() && text(&again.stderr).contains("already exists"));
    if lang == "rust" {
        own_workspace(work.path());
    }

    let tests = xtask(&["plugin-test".as_ref(), dir.as_os_str()]);
    assert!(
        tests.status.success(),
        "{}{}",
        text(&tests.stdout),
        text(&tests.stderr)
    );
    let built = xtask(&["plugin".as_ref(), dir.as_os_str(), work.path().as_os_str()]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let wasm = work.path().join("door-sensor-0.1.0.wasm");
    let input = dir.join("fixtures/input.jsonl");
    let out = weir(
        &[
            "transform",
            "--plugin",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = std::fs::read_to_string(dir.join("fixtures/expected.jsonl")).unwrap();
    let parse = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(parse(&text(&out.stdout)), parse(&want));
    // The native tests can fail: a broken fixture is reported.
    std::fs::write(
        dir.join("fixtures/expected.jsonl"),
        want.replace("21.5", "22.5"),
    )
    .unwrap();
    let tests = xtask(&["plugin-test".as_ref(), dir.as_os_str()]);
    assert!(!tests.status.success(), "{}", text(&tests.stdout));
}

/// A Cargo workspace of its own around the Rust plugin in `work/door-sensor`, as a plugin
/// kept outside weir's checkout has: weir's workspace settings (dependencies, lints,
/// profiles) with its path dependencies made absolute, and its lock file, so that the
/// plugin builds with the versions weir is tested with.
fn own_workspace(work: &std::path::Path) {
    let weir = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let start = weir
        .find("members = [")
        .expect("weir's workspace lists its members");
    let end = start + weir[start..].find(']').unwrap() + 1;
    let own = format!(
        "{}members = [\"door-sensor\"]{}",
        &weir[..start],
        &weir[end..]
    )
    .replace("path = \"", &format!("path = \"{}/", root().display()))
    .lines()
    .filter(|l| !l.starts_with("default-members"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(work.join("Cargo.toml"), own).unwrap();
    std::fs::copy(root().join("Cargo.lock"), work.join("Cargo.lock")).unwrap();
}

#[test]
fn a_new_rust_plugin_passes_its_tests_builds_and_holds_to_its_fixtures() {
    a_new_plugin_passes_its_tests_builds_and_holds_to_its_fixtures("rust");
}

#[test]
fn a_new_python_plugin_passes_its_tests_builds_and_holds_to_its_fixtures() {
    a_new_plugin_passes_its_tests_builds_and_holds_to_its_fixtures("python");
}

#[test]
fn a_new_typescript_plugin_passes_its_tests_builds_and_holds_to_its_fixtures() {
    a_new_plugin_passes_its_tests_builds_and_holds_to_its_fixtures("typescript");
}

/// `weir plugin new` refuses a name it cannot spell in every language, saying how.
#[test]
fn a_new_plugin_needs_a_usable_name() {
    let work = tempfile::tempdir().unwrap();
    let out = weir(
        &[
            "plugin",
            "new",
            "Door_Sensor",
            "--dir",
            work.path().join("x").to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("lowercase letters"),
        "{}",
        text(&out.stderr)
    );
    assert!(!work.path().join("x").exists());
}
