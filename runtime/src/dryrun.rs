//! `weir transform`: run a plugin over JSON-lines messages and print one outcome per line,
//! exactly as the live pipeline would transform them (same host, limits, schema check).
//! The line formats are [`weir_sdk::dryrun`]'s, shared with native fixture tests.

use crate::transform::{Configured, Message, Outcome};
use std::io::{BufRead, Write};
use weir_sdk::dryrun::{self as lines, LineOutcome, LineRecord};

/// Counts of what a run printed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Input lines read.
    pub lines: usize,
    /// Lines that were not valid input.
    pub invalid: usize,
}

/// Read messages from `input`, transform them in batches of `batch_size`, write outcomes to
/// `output`. An invalid input line gets its own `fail` line; the rest still run.
pub fn run(
    plugin: &Configured,
    input: impl BufRead,
    mut output: impl Write,
    batch_size: usize,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    // Each slot: a parsed message (index into `batch`) or an input error, in input order.
    let mut slots: Vec<Result<usize, String>> = Vec::new();
    let mut batch: Vec<Message> = Vec::new();
    let flush = |slots: &mut Vec<Result<usize, String>>,
                 batch: &mut Vec<Message>,
                 output: &mut dyn Write|
     -> std::io::Result<()> {
        let outcomes = plugin.process(batch.as_mut_slice());
        for slot in slots.drain(..) {
            let line = match slot {
                Ok(i) => render(plugin, &outcomes[i]),
                Err(reason) => LineOutcome::Fail {
                    code: "input.invalid".into(),
                    reason,
                },
            };
            writeln!(output, "{}", line.to_line())?;
        }
        batch.clear();
        output.flush()
    };
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        match lines::parse_input(&line) {
            Ok(m) => {
                slots.push(Ok(batch.len()));
                batch.push(Message {
                    topic: m.topic,
                    payload: m.payload,
                    properties: m.properties,
                    content_type: m.content_type,
                    received_at_ms: m.received_at_ms,
                });
            }
            Err(e) => {
                summary.invalid += 1;
                slots.push(Err(format!("input line {}: {e}", n + 1)));
            }
        }
        if batch.len() >= batch_size.max(1) {
            flush(&mut slots, &mut batch, &mut output)?;
        }
    }
    flush(&mut slots, &mut batch, &mut output)?;
    Ok(summary)
}

/// Show an outcome, decoding record values back from Avro so what is printed is what
/// Kafka would hold.
pub fn render(plugin: &Configured, outcome: &Outcome) -> LineOutcome {
    match outcome {
        Outcome::Skip => LineOutcome::Skip,
        Outcome::Reject { code, reason } => LineOutcome::Reject {
            code: code.clone(),
            reason: reason.clone(),
        },
        Outcome::Fail { code, reason } => LineOutcome::Fail {
            code: code.to_string(),
            reason: reason.clone(),
        },
        Outcome::Emit(records) => LineOutcome::Emit {
            records: records
                .iter()
                .map(|r| LineRecord {
                    key: r.key.clone(),
                    value: plugin
                        .plugin()
                        .schema()
                        .decode_to_json(&r.value)
                        .expect("records encoded by this schema decode with it"),
                    headers: lines::headers_json(&r.headers),
                })
                .collect(),
        },
    }
}
