//! A plugin that misbehaves on request, to prove the host contains it. The payload picks
//! the behaviour:
//!
//! | payload       | behaviour                                              |
//! |---------------|--------------------------------------------------------|
//! | `loop`        | spins forever (CPU deadline)                           |
//! | `bomb`        | allocates until memory runs out (memory cap)           |
//! | `panic`       | panics with a message (reported through `log`)       |
//! | `recurse`     | unbounded recursion (stack overflow)                   |
//! | `badschema`   | emits `{"text": 5}`, which violates the schema         |
//! | `huge`        | emits one record of 2 MiB                              |
//! | `many`        | emits 20,000 records                                   |
//! | `reject`      | rejects with `test.rejected`                           |
//! | `spoof`       | sets the reserved header `weir.plugin`                 |
//! | anything else | emits `{"text": <payload>}`                            |

use serde_json::{Value, json};
use weir_sdk::{Config, Emit, Message, Plugin, Record, Rejection};

/// The plugin; no config.
#[derive(Debug)]
pub struct Adversarial;

#[inline(never)]
fn recurse(depth: u64, sink: &mut [u64; 16]) -> u64 {
    if depth == u64::MAX {
        return sink[0];
    }
    let mut local = [depth; 16];
    local[(depth % 16) as usize] ^= sink[(depth % 16) as usize];
    let below = recurse(std::hint::black_box(depth + 1), &mut local);
    below.wrapping_add(local[3])
}

impl Plugin for Adversarial {
    type Record = Value;

    fn init(_: &Config) -> Result<Self, String> {
        Ok(Adversarial)
    }

    fn transform(&self, msg: &Message) -> weir_sdk::Result<Value> {
        let text = msg.payload_str()?;
        match text {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xAB; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("adversarial panic on request"),
            "recurse" => {
                let mut seed = [1u64; 16];
                let n = recurse(0, &mut seed);
                Ok(Emit::one(json!({ "text": n.to_string() })))
            }
            "badschema" => Ok(Emit::one(json!({ "text": 5 }))),
            "huge" => Ok(Emit::one(json!({ "text": "x".repeat(2 << 20) }))),
            "many" => Ok(Emit::many(
                (0..20_000).map(|i| json!({ "text": i.to_string() })),
            )),
            "reject" => Err(Rejection::new("test.rejected", "rejected on request")),
            "spoof" => Ok(Emit::one(
                Record::from(json!({ "text": "spoof" }))
                    .with_header("weir.plugin", "someone-else@9.9.9"),
            )),
            other => Ok(Emit::one(json!({ "text": other }))),
        }
    }
}

weir_sdk::export_plugin!(Adversarial, schema = "../echo.avsc");
