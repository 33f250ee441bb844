/**
 * The glue between a plugin class and weir's `weir:transform` world: the `describe`,
 * `init` and `process` exports, in the shapes componentize-js gives the contract's types.
 *
 * Used only inside the Wasm build: `cargo xtask plugins` generates the entry module that
 * calls {@link exportPlugin} with the name and version from `package.json` and the schema
 * file's text, bundles it with esbuild and builds the component with componentize-js.
 */

// The host's one import, resolved by componentize-js against wit/transform.wit.
// @ts-ignore: a component import, not a module on disk.
import { log as hostLog } from "weir:transform/host@1.2.0";
import {
  Config,
  ConfigError,
  Level,
  Message,
  PluginClass,
  Plugin,
  Rejection,
  recordsOf,
  setLogSink,
  valueJson,
} from "./index";

/** Something a plugin asked for that weir does not grant it (a clock, randomness). */
export class NotGranted extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NotGranted";
  }
}

/** The SDK's own functions, skipped when saying where an error came from. */
const SDK_FRAMES = new Set(["NotGranted", "refuse", "NoDate"]);

/** `TypeError: ... (at transform@source.js:42:7)`: what went wrong, and where in the
 * plugin (the first stack frame that is not the SDK's). */
export function describeError(e: unknown): string {
  if (!(e instanceof Error)) return `a thrown ${typeof e}: ${String(e)}`;
  const frame = (e.stack ?? "")
    .split("\n")
    .map((l) => l.trim())
    .find((l) => /:\d+/.test(l) && !SDK_FRAMES.has(l.split("@")[0].replace(/\/<$/, "")));
  return `${e.name}: ${e.message}${frame ? ` (at ${frame})` : ""}`;
}

/**
 * Make the clock and randomness fail with a reason: the engine would otherwise give a
 * value fixed at build time or one that changes from call to call, and either way a replay
 * would not be byte-identical. `new Date(ms)` (a time the plugin gives) stays available.
 *
 * Runs when this module is evaluated, before the plugin's module is (the generated entry
 * imports this first): a plugin that keeps `const r = Math.random` keeps the refusal.
 */
export function denyNondeterminism(): void {
  const refuse = (what: string, instead: string) => () => {
    throw new NotGranted(`a weir plugin is given no ${what}; ${instead}`);
  };
  const clock = refuse("clock", "use message.receivedAtMs, fixed when weir received it");
  const chance = refuse("randomness", "derive what you need from the message");
  Math.random = chance;
  const RealDate = Date;
  // `Date()` without `new` is always the current time, whatever its arguments.
  const NoDate = function (...args: unknown[]) {
    if (!new.target || args.length === 0) clock();
    // @ts-ignore: forwarding to the real constructor.
    return new RealDate(...args);
  } as unknown as DateConstructor;
  NoDate.prototype = RealDate.prototype;
  NoDate.UTC = RealDate.UTC;
  NoDate.parse = RealDate.parse;
  NoDate.now = clock;
  // The real constructor stays out of reach through an instance, too.
  Object.defineProperty(RealDate.prototype, "constructor", { value: NoDate });
  globalThis.Date = NoDate;
  if (typeof performance !== "undefined") {
    (performance as { now: () => number }).now = clock;
  }
  const crypto = (globalThis as { crypto?: { getRandomValues?: unknown; randomUUID?: unknown } }).crypto;
  if (crypto) {
    crypto.getRandomValues = chance;
    crypto.randomUUID = chance;
  }
}

denyNondeterminism();

type WitMessage = {
  topic: string;
  payload: Uint8Array;
  properties: [string, string][];
  contentType?: string;
  receivedAtMs: bigint;
};

type WitOutcome =
  | { tag: "emit"; val: { key?: string; value: string; headers: [string, string][] }[] }
  | { tag: "reject"; val: { code: string; reason: string } }
  | { tag: "skip" };

function outcome(plugin: Plugin, m: WitMessage): WitOutcome {
  const message = new Message(
    m.topic,
    m.payload,
    m.properties,
    m.contentType,
    Number(m.receivedAtMs),
  );
  let records;
  try {
    records = recordsOf(plugin.transform(message));
  } catch (e) {
    if (e instanceof Rejection) return { tag: "reject", val: { code: e.code, reason: e.reason } };
    hostLog("error", `plugin threw ${describeError(e)}`);
    throw e;
  }
  if (records === null) return { tag: "skip" };
  const out = [];
  for (const r of records) {
    let value;
    try {
      value = valueJson(r.value);
    } catch (e) {
      return {
        tag: "reject",
        val: {
          code: "record.serialize",
          reason: `record could not be serialised to JSON: ${e instanceof Error ? e.message : e}`,
        },
      };
    }
    out.push({ key: r.key, value, headers: [...r.headers] });
  }
  return { tag: "emit", val: out };
}

/** The component's exports over `plugin`. */
export function exportPlugin(
  plugin: PluginClass,
  info: { name: string; version: string; schema: string },
) {
  setLogSink((level: Level, message: string) => hostLog(level, message));
  let instance: Plugin | undefined;
  const build = (config: [string, string][]): Plugin => {
    try {
      return new plugin(new Config(config));
    } catch (e) {
      if (e instanceof ConfigError) throw e.message;
      throw `the plugin's constructor threw ${describeError(e)}`;
    }
  };
  return {
    describe: () => ({ ...info }),
    init(config: [string, string][]): void {
      instance = build(config);
    },
    process(batch: WitMessage[]): WitOutcome[] {
      if (instance === undefined) {
        try {
          instance = build([]);
        } catch (e) {
          const reason = `plugin was not initialised and the empty config is refused: ${e}`;
          return batch.map(() => ({ tag: "reject", val: { code: "plugin.config", reason } }));
        }
      }
      const plugin = instance;
      return batch.map((m) => outcome(plugin, m));
    },
  };
}
