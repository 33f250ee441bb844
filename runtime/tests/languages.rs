//! Plugins written in Python and TypeScript, against the real host: their thermostats
//! publish the Rust one's Avro bytes, message for message, and a hostile plugin in either
//! language is contained as a Rust one is. (End to end through `weir run` and
//! `weir replay`: `replay.rs`; push, promote, rollback and shadow: `lifecycle.rs`.)

mod common;

use common::{kind, message, plugin_wasm, root};
use std::sync::OnceLock;
use weir::transform::{Host, Limits, Message, Outcome, Plugin};

/// One host and each plugin compiled once for the whole file (an interpreter component
/// takes seconds to compile).
fn load(id: &'static str) -> &'static Plugin {
    static PLUGINS: OnceLock<std::sync::Mutex<Vec<(&'static str, &'static Plugin)>>> =
        OnceLock::new();
    let host = host();
    let mut loaded = PLUGINS.get_or_init(Default::default).lock().unwrap();
    if let Some((_, p)) = loaded.iter().find(|(i, _)| *i == id) {
        return p;
    }
    let plugin: &'static Plugin = Box::leak(Box::new(
        host.load_file(&plugin_wasm(id))
            .unwrap_or_else(|e| panic!("{id}: {e}")),
    ));
    loaded.push((id, plugin));
    plugin
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::new(Limits::default(), None).unwrap())
}

/// The shared fixtures' inputs and a generated corpus of every payload shape, with
/// readings whose Fahrenheit conversion lands on a rounding half, unknown units, values
/// out of range and payloads of the wrong shape.
fn corpus() -> Vec<Message> {
    let fixtures =
        std::fs::read_to_string(root().join("plugins/thermostat/fixtures/input.jsonl")).unwrap();
    let mut out: Vec<Message> = fixtures
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut m = message(
                v["topic"].as_str().unwrap(),
                v["payload"].as_str().unwrap().as_bytes(),
            );
            m.received_at_ms = v["received_at_ms"].as_i64().unwrap_or(0);
            m
        })
        .collect();
    let units = ["F", "C", "K", "f", "°F", "X"];
    for i in 0..1_500i64 {
        let f = -60.0 + (i as f64) * 0.137;
        let payload = match i % 7 {
            0 => format!(r#"{{"ts":{i},"temp_c":{:.2},"setpoint_c":21}}"#, f / 3.0),
            1 => format!(
                r#"{{"ts":{i},"temperature":{{"value":{f:.3},"unit":"{}"}},"setpoint":{{"value":{:.1}}}}}"#,
                units[(i % 6) as usize],
                f + 1.0
            ),
            2 => format!(
                r#"{{"temperature":{{"value":{f:.2}}},"humidity":{{"value":{},"unit":"%"}},"fw":"3.{i}"}}"#,
                i % 130
            ),
            3 => format!(r#"{{"device":"t-{}","temp_c":{}}}"#, i % 3, i % 120),
            4 => format!(r#"{{"heartbeat":{}}}"#, i % 2 == 0),
            // A rounding half, and a reading that rounds to -0 (its sign is in the Avro).
            5 if i % 2 == 0 => format!(
                r#"{{"temperature":{{"value":-39.973,"unit":"F"}},"ts":{}}}"#,
                i * 1000
            ),
            5 => format!(
                r#"{{"temperature":{{"value":31.999,"unit":"F"}},"ts":{}}}"#,
                i * 1000
            ),
            _ => [
                "{",
                r#"{"temp_c":"20"}"#,
                r#"{"ts":1.5,"temp_c":2}"#,
                "[]",
                r#"{"temp_c":1e400}"#,
                r#"{"heartbeat":null,"temp_c":21}"#,
                r#"{"temperature":{"value":1e307,"unit":"F"}}"#,
                r#"{"temperature":{"value":-1e307,"unit":"F"}}"#,
            ][(i % 8) as usize]
                .to_owned(),
        };
        let mut m = message(
            &format!("plant/7/thermostat/t-{}", i % 3),
            payload.as_bytes(),
        );
        m.received_at_ms = 1_700_000_000_000 + i;
        out.push(m);
    }
    out
}

/// The thermostat in `id`'s language against the Rust one, message for message: the same
/// records (Avro bytes), the same rejection codes and reasons (a parser's reason aside).
fn same_bytes_as_rust(id: &'static str) {
    same_bytes_as_rusts(id, load(id));
}

/// As [`same_bytes_as_rust`], for a loaded plugin.
fn same_bytes_as_rusts(id: &str, plugin: &Plugin) {
    let rust = load("thermostat@1.0.0").configure(vec![], "rust").unwrap();
    let other = plugin.configure(vec![], "other").unwrap();
    let mut inputs = corpus();
    let mut emitted = 0;
    for chunk in inputs.chunks_mut(64) {
        let (r, p) = (rust.process(&mut chunk.to_vec()), other.process(chunk));
        for ((want, got), m) in r.iter().zip(&p).zip(chunk.iter()) {
            let payload = String::from_utf8_lossy(&m.payload);
            match (want, got) {
                (Outcome::Emit(w), Outcome::Emit(g)) => {
                    assert_eq!(w, g, "{id}: records differ for {payload}");
                    emitted += 1;
                }
                (
                    Outcome::Reject {
                        code: wc,
                        reason: wr,
                    },
                    Outcome::Reject {
                        code: gc,
                        reason: gr,
                    },
                ) => {
                    assert_eq!(wc, gc, "{id}: {payload}: {wr} / {gr}");
                    // A parser's reason is in its own words; every other is the plugin's.
                    if wc != "payload.malformed" {
                        assert_eq!(wr, gr, "{id}: {payload}");
                    }
                }
                (w, g) => assert_eq!(kind(w), kind(g), "{id}: {payload}"),
            }
        }
    }
    assert!(emitted > 700, "the corpus must mostly emit: {emitted}");
}

#[test]
fn the_python_thermostat_publishes_the_rust_ones_bytes_for_every_message() {
    same_bytes_as_rust("thermostat-py@1.0.0");
}

#[test]
fn the_typescript_thermostat_publishes_the_rust_ones_bytes_for_every_message() {
    same_bytes_as_rust("thermostat-ts@1.0.0");
}

/// A plugin built against contract 1.0.0 still loads and publishes what it did: the
/// TypeScript thermostat with its contract imports renamed to `@1.0.0` is a 1.0.0 `plugin`
/// as an older SDK built it; the host links it to its 1.2.0 host interface by semver.
#[test]
fn a_plugin_built_against_contract_1_0_0_still_runs_and_publishes_the_same_bytes() {
    let built = std::fs::read(plugin_wasm("thermostat-ts@1.0.0")).unwrap();
    let old = common::built_against(&built, "1.0.0");
    let plugin = host().load(&old).unwrap();
    assert_eq!(plugin.info().contract, "weir:transform@1.0.0");
    same_bytes_as_rusts("thermostat-ts built against 1.0.0", &plugin);
}

/// An adversarial plugin with the default limits.
/// With CPU time enough that a memory bomb meets its memory cap first even when the
/// machine is loaded (an interpreter touching 64 MiB takes tens of ms, more while other
/// processes fault pages in): `bomb` is then always `plugin.oom`, never a timeout.
fn hostile(id: &'static str) -> weir::transform::Configured {
    let limits = weir::transform::CallLimits {
        time_per_message: Some(std::time::Duration::from_millis(400)),
        ..Default::default()
    };
    load(id).configure_with(vec![], id, limits).unwrap()
}

fn reason(o: &Outcome) -> &str {
    match o {
        Outcome::Fail { reason, .. } | Outcome::Reject { reason, .. } => reason,
        other => panic!("{other:?}"),
    }
}

/// The adversarial plugin `id` on every misbehaviour at once: each is classified, named,
/// and the healthy messages beside them still emit. `raised` is how the language names
/// the exception it was asked to raise.
fn contained(id: &'static str, raised: &str) {
    let plugin = hostile(id);
    let payloads = [
        "a",
        "loop",
        "b",
        "bomb",
        "raise",
        "c",
        "recurse",
        "clock",
        "random",
        "badschema",
        "reject",
        "d",
    ];
    let mut batch: Vec<_> = payloads
        .iter()
        .map(|p| message("t/x", p.as_bytes()))
        .collect();
    let out = plugin.process(&mut batch);
    let kinds: Vec<String> = out.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "emit:1",
            "fail:plugin.timeout",
            "emit:1",
            "fail:plugin.oom",
            "fail:plugin.trap",
            "emit:1",
            "fail:plugin.trap",
            "fail:plugin.trap",
            "fail:plugin.trap",
            "fail:schema.violation",
            "reject:test.rejected",
            "emit:1",
        ],
        "{id}"
    );
    // A trap names the exception and where in the plugin it was raised.
    assert!(reason(&out[4]).contains(raised), "{}", reason(&out[4]));
    assert!(reason(&out[4]).contains("(at "), "{}", reason(&out[4]));
    assert!(reason(&out[7]).contains("no clock"), "{}", reason(&out[7]));
    assert!(
        reason(&out[8]).contains("no randomness"),
        "{}",
        reason(&out[8])
    );
    // The instance that trapped was replaced: the plugin goes on.
    let again = plugin.process(&mut [message("t/x", b"e")]);
    assert_eq!(kind(&again[0]), "emit:1");
    // Randomness bound before the plugin's first call is refused too; formatting a time
    // the plugin gives is allowed.
    let out = plugin.process(&mut [message("t/x", b"early"), message("t/x", b"date")]);
    assert!(reason(&out[0]).contains("no randomness"), "{id}: {out:?}");
    assert_eq!(kind(&out[1]), "emit:1", "{id}: {out:?}");
}

#[test]
fn a_hostile_python_plugin_is_contained_and_healthy_messages_still_emit() {
    contained(
        "adversarial-py@0.1.0",
        "ValueError: adversarial exception on request (at adversarial.py:",
    );
    let recursion = hostile("adversarial-py@0.1.0").process(&mut [message("t/x", b"recurse")]);
    assert!(
        reason(&recursion[0]).contains("RecursionError"),
        "{recursion:?}"
    );
}

#[test]
fn a_hostile_typescript_plugin_is_contained_and_healthy_messages_still_emit() {
    contained(
        "adversarial-ts@0.1.0",
        "RangeError: adversarial exception on request (at transform@",
    );
    let recursion = hostile("adversarial-ts@0.1.0").process(&mut [message("t/x", b"recurse")]);
    assert!(
        reason(&recursion[0]).contains("too much recursion"),
        "{recursion:?}"
    );
}

/// An exception in the constructor refuses the config with its words, in either language.
#[test]
fn an_exception_in_a_constructor_refuses_the_config_with_its_words() {
    for (id, raised) in [
        (
            "adversarial-py@0.1.0",
            "RuntimeError: adversarial constructor fails on request",
        ),
        (
            "adversarial-ts@0.1.0",
            "Error: adversarial constructor fails on request",
        ),
    ] {
        let plugin = load(id);
        let Err(e) = plugin.configure(vec![("init".into(), "raise".into())], "a") else {
            panic!("{id}: an exception in the constructor must refuse the config")
        };
        assert!(e.contains(raised), "{id}: {e}");
        let Err(e) = plugin.configure(vec![("init".into(), "refuse".into())], "b") else {
            panic!("{id}: a ConfigError must refuse the config")
        };
        assert!(e.contains("refused on request"), "{id}: {e}");
    }
}

#[test]
fn what_a_python_build_computes_is_the_same_in_every_instance() {
    let outputs: Vec<Vec<Outcome>> = (0..2)
        .map(|_| {
            hostile("adversarial-py@0.1.0").process(&mut [
                message("t/x", b"hash"),
                message("t/x", b"seeded"),
                message("t/x", b"seeded"),
            ])
        })
        .collect();
    assert_eq!(outputs[0], outputs[1]);
    assert!(matches!(outputs[0][0], Outcome::Emit(_)));
    // A generator the plugin seeds itself restarts with each message: same draw twice.
    assert_eq!(outputs[0][1], outputs[0][2]);
}

/// A cohort's own limits hold for an interpreter plugin as for a Rust one: a tighter
/// memory cap stops the bomb sooner, a tighter time budget the loop, and healthy messages
/// still fit within both. Each limit is met on its own: under the tight time budget a
/// loaded machine could time the bomb out before it reaches the memory cap, so the memory
/// cap is met with CPU time to spare (as in [`hostile`]).
#[test]
fn a_cohorts_own_limits_hold_for_interpreter_plugins() {
    use std::time::Duration;
    use weir::transform::CallLimits;
    let cases = [
        (
            b"bomb",
            Duration::from_millis(400),
            "fail:plugin.oom",
            "40 MiB",
        ),
        (
            b"loop",
            Duration::from_millis(30),
            "fail:plugin.timeout",
            "30ms",
        ),
    ];
    for id in ["adversarial-py@0.1.0", "adversarial-ts@0.1.0"] {
        for (hostile_text, time, kind_expected, reason_expected) in cases {
            let limits = CallLimits {
                time_per_message: Some(time),
                memory_bytes: Some(40 << 20),
                output_bytes_per_message: None,
            };
            let plugin = load(id).configure_with(vec![], id, limits).unwrap();
            let out = plugin.process(&mut [
                message("t/x", b"a"),
                message("t/x", hostile_text),
                message("t/x", b"b"),
            ]);
            let kinds: Vec<String> = out.iter().map(kind).collect();
            assert_eq!(kinds, ["emit:1", kind_expected, "emit:1"], "{id}");
            assert!(
                reason(&out[1]).contains(reason_expected),
                "{id}: {}",
                reason(&out[1])
            );
        }
    }
}
