/**
 * A TypeScript plugin that misbehaves on request, to prove weir contains it. The payload
 * picks the behaviour:
 *
 * | payload     | behaviour                                                  |
 * |-------------|------------------------------------------------------------|
 * | `loop`      | spins forever (CPU deadline)                               |
 * | `bomb`      | allocates until memory runs out (memory cap)               |
 * | `raise`     | throws an exception (a bug: the call traps)                |
 * | `recurse`   | unbounded recursion                                        |
 * | `clock`     | reads the clock (`Date.now()`), which a plugin is not given |
 * | `random`    | draws from `Math.random()`, which it is not given either   |
 * | `early`     | calls `Math.random` as bound when the module loaded        |
 * | `date`      | formats a time it gives (`new Date(0)`): allowed           |
 * | `badschema` | emits `{"text": 5}`, which violates the schema             |
 * | `reject`    | rejects with `test.rejected`                               |
 * | `log`       | logs a warning, then emits                                 |
 * | other       | emits `{"text": <payload>}`                                |
 *
 * Config `init = "raise"` makes the constructor throw; `init = "refuse"` refuses the config.
 */

import { Config, ConfigError, Message, Plugin, Rejection, log } from "weir-sdk";

// Bound when the module is evaluated: after the SDK takes randomness away, so this is the
// refusal too.
const early = Math.random;

function recurse(n: number): number {
  return recurse(n + 1) + 1;
}

export class Adversarial implements Plugin {
  constructor(config: Config) {
    const how = config.get("init");
    if (how === "raise") throw new Error("adversarial constructor fails on request");
    if (how === "refuse") throw new ConfigError("config key `init` = refuse: refused on request");
  }

  transform(message: Message) {
    const text = message.text();
    switch (text) {
      case "loop": {
        let n = 0;
        for (;;) n = (n + 1) | 0;
      }
      case "bomb": {
        const hoard: Uint8Array[] = [];
        for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
      }
      case "raise":
        throw new RangeError("adversarial exception on request");
      case "recurse":
        return { text: String(recurse(0)) };
      case "clock":
        return { text: String(Date.now()) };
      case "random":
        return { text: String(Math.random()) };
      case "early":
        return { text: String(early()) };
      case "date":
        return { text: new Date(0).toISOString() };
      case "badschema":
        return { text: 5 };
      case "reject":
        throw new Rejection("test.rejected", "rejected on request");
      case "log":
        log("warn", "a line from the adversarial plugin");
        return { text };
      default:
        return { text };
    }
  }
}
