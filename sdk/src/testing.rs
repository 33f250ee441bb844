//! Native testing: a stub of the host's `log` import and a fixture runner, so plugin logic is
//! tested with plain `cargo test`, no Wasm involved.

use crate::dryrun::{self, LineOutcome, LineRecord};
use crate::{Config, Emit, Level, Plugin};
use std::cell::RefCell;
use std::path::Path;

thread_local! {
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// The native stand-in for the host's `log`: keep the line for [`take_logs`].
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn record_log(level: Level, message: &str) {
    LOGS.with(|l| l.borrow_mut().push((level, message.to_owned())));
}

/// The lines logged on this thread since the last call.
pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// Run one message through a plugin natively and render the outcome as `weir transform`
/// prints it (record values as the JSON the plugin produced).
pub fn run<P: Plugin>(plugin: &P, message: &crate::Message) -> LineOutcome {
    match plugin.transform(message) {
        Err(r) => LineOutcome::Reject {
            code: r.code,
            reason: r.reason,
        },
        Ok(Emit::Skip) => LineOutcome::Skip,
        Ok(Emit::Records(records)) => LineOutcome::Emit {
            records: records
                .into_iter()
                .map(|r| LineRecord {
                    key: r.key,
                    value: serde_json::to_value(&r.value).expect("record serialises to JSON"),
                    headers: dryrun::headers_json(&r.headers),
                })
                .collect(),
        },
    }
}

/// Check a plugin's fixtures natively: every line of `dir/input.jsonl` must give the
/// matching line of `dir/expected.jsonl`. The same files are checked against the Wasm build
/// with `weir transform`, so native and Wasm are held to one expectation.
///
/// Panics with the first mismatch, naming the line. The reason of a rejection by the JSON
/// or text decoder is not compared ([`LineOutcome::matches`]): it is the parser's wording.
pub fn check_fixtures<P: Plugin>(config: &Config, dir: impl AsRef<Path>) {
    let dir = dir.as_ref();
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
    };
    let inputs = read("input.jsonl");
    let expected = read("expected.jsonl");
    let inputs: Vec<&str> = inputs.lines().filter(|l| !l.trim().is_empty()).collect();
    let expected: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{}: input.jsonl has {} lines but expected.jsonl has {}",
        dir.display(),
        inputs.len(),
        expected.len()
    );
    let plugin = P::init(config).expect("plugin accepts the fixture config");
    for (n, (input, want)) in inputs.iter().zip(&expected).enumerate() {
        let got = match dryrun::parse_input(input) {
            Ok(message) => run(&plugin, &message),
            Err(reason) => LineOutcome::Fail {
                code: "input.invalid".into(),
                reason,
            },
        };
        let want: LineOutcome = serde_json::from_str(want)
            .unwrap_or_else(|e| panic!("expected.jsonl line {}: {e}", n + 1));
        assert!(
            got.matches(&want),
            "fixture line {} of {}:\n  input: {input}\n  got:   {}\n  want:  {}",
            n + 1,
            dir.display(),
            got.to_line(),
            want.to_line()
        );
    }
}
