/**
 * Write weir transform plugins in TypeScript.
 *
 * A plugin is a class built once per Wasm instance from the cohort's config, with one
 * method that turns an MQTT message into records of the plugin's Avro schema, or rejects it:
 *
 * ```ts
 * import { Config, Message, Plugin, Rejection, SKIP } from "weir-sdk";
 *
 * export class Echo implements Plugin {
 *   constructor(private config: Config) {}
 *   transform(message: Message) {
 *     return { text: message.text() };
 *   }
 * }
 * ```
 *
 * `transform` returns an object (one record with that value; it must match the Avro schema,
 * weir checks), a {@link Record} (a value with a key or headers), an array of either (any
 * number of records, possibly none) or {@link SKIP}; it throws {@link Rejection} to
 * quarantine the message. Any other exception is a bug: weir quarantines the message as
 * `plugin.trap` with the exception.
 *
 * The plugin's name and version come from its `package.json`, its schema and class from the
 * `weir` field there; `cargo xtask plugins` builds it into a Wasm component that imports
 * nothing but weir's `log`. Inside weir there is no clock and no randomness: the same
 * message through the same component gives the same bytes, always.
 */

/** Log severities, as in the contract. */
export type Level = "trace" | "debug" | "info" | "warn" | "error";

type Sink = (level: Level, message: string) => void;

const nativeLogs: [Level, string][] = [];
let sink: Sink = (level, message) => {
  nativeLogs.push([level, message]);
};

/** Where {@link log} writes: weir's `log` import inside Wasm (set by the glue). */
export function setLogSink(next: Sink): void {
  sink = next;
}

/** The lines logged natively since the last call (for tests). */
export function takeLogs(): [Level, string][] {
  return nativeLogs.splice(0, nativeLogs.length);
}

/**
 * Write a line to weir's log, attributed to the plugin and the cohort. Cheap, but not
 * free: do not log per message on a healthy path.
 */
export function log(level: Level, message: string): void {
  sink(level, message);
}

/**
 * A message the plugin refuses: a stable dotted code and a sentence for a human.
 *
 * Codes are 1 to 64 characters of `a-z`, `0-9`, `.`, `-` and `_`, starting with a letter
 * (`reading.out-of-range`); they become Kafka headers and metric labels, so they must not
 * carry message data. The reason may.
 */
export class Rejection extends Error {
  constructor(
    readonly code: string,
    readonly reason: string,
  ) {
    super(`${code}: ${reason}`);
    this.name = "Rejection";
  }
}

/** Return this from `transform` for a valid message with nothing to publish. */
export const SKIP: unique symbol = Symbol("weir.skip");

/** A record value: a JSON object matching the plugin's Avro schema. */
export type Value = { [field: string]: unknown };

/** One output record: a value, an optional Kafka key and headers (`weir.*` are reserved). */
export class Record {
  constructor(
    readonly value: Value,
    readonly key?: string,
    readonly headers: [string, string][] = [],
  ) {}
}

/** What `transform` may return. */
export type Output = Value | Record | (Value | Record)[] | typeof SKIP;

/** The configuration a plugin refuses; weir refuses to start (or load the version). */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** One MQTT message, exactly as the broker delivered it. */
export class Message {
  readonly payload: Uint8Array;

  constructor(
    readonly topic: string,
    payload: Uint8Array | string,
    readonly properties: [string, string][] = [],
    readonly contentType: string | undefined = undefined,
    /** When weir received it (ms since the Unix epoch); fixed, so a replay sees the same. */
    readonly receivedAtMs: number = 0,
  ) {
    this.payload = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  }

  /** The `index`-th level of the topic (0-based; negative counts from the end). */
  topicLevel(index: number): string | undefined {
    const levels = this.topic.split("/");
    return levels.at(index);
  }

  /** The first MQTT v5 user property called `name`. */
  property(name: string): string | undefined {
    return this.properties.find(([k]) => k === name)?.[1];
  }

  /** The payload as UTF-8 text, or a `payload.encoding` rejection. */
  text(): string {
    try {
      return decoder.decode(this.payload);
    } catch {
      throw new Rejection("payload.encoding", "payload is not UTF-8 text");
    }
  }

  /** The payload parsed as JSON, or a `payload.malformed` rejection. */
  json(): unknown {
    let text: string;
    try {
      text = decoder.decode(this.payload);
    } catch {
      throw new Rejection("payload.malformed", "payload is not valid JSON: it is not UTF-8");
    }
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Rejection(
        "payload.malformed",
        `payload is not valid JSON: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
  }
}

/** The cohort's plugin config: the `config` table of weir.toml, as key/value strings. */
export class Config {
  readonly pairs: [string, string][];

  constructor(pairs: Iterable<[string, string]> = []) {
    this.pairs = [...pairs];
  }

  /** The value of `key` (the last one given), or `fallback`. */
  get(key: string): string | undefined;
  get(key: string, fallback: string): string;
  get(key: string, fallback?: string): string | undefined {
    for (let i = this.pairs.length - 1; i >= 0; i--) {
      if (this.pairs[i][0] === key) return this.pairs[i][1];
    }
    return fallback;
  }

  /** The value of `key` as a finite number, `fallback` when absent. */
  number(key: string, fallback: number): number {
    const v = this.get(key);
    if (v === undefined) return fallback;
    const n = v.trim() === "" ? NaN : Number(v);
    if (!Number.isFinite(n)) {
      throw new ConfigError(`config key \`${key}\` = ${JSON.stringify(v)} is invalid: expected a number`);
    }
    return n;
  }

  /** The value of `key` as `true` or `false`, `fallback` when absent. */
  flag(key: string, fallback: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return fallback;
    if (v === "true" || v === "false") return v === "true";
    throw new ConfigError(`config key \`${key}\` = ${JSON.stringify(v)} is invalid: expected true or false`);
  }
}

/** A plugin: built from the cohort's config, one method per message. */
export interface Plugin {
  transform(message: Message): Output;
}

/** A plugin's class. */
export type PluginClass = new (config: Config) => Plugin;

/**
 * Normalise what `transform` returned into records (`null` for {@link SKIP}); anything else
 * is a bug in the plugin, thrown as a `TypeError` naming what came back.
 */
export function recordsOf(result: unknown): Record[] | null {
  if (result === SKIP) return null;
  const items = Array.isArray(result) ? result : [result];
  if (result === undefined || result === null) {
    throw new TypeError(
      `transform returned ${result}; expected an object, a Record, an array of them, or SKIP (a missing \`return\`?)`,
    );
  }
  return items.map((item) => {
    if (item instanceof Record) return item;
    if (typeof item === "object" && item !== null && !Array.isArray(item)) {
      return new Record(item as Value);
    }
    throw new TypeError(`transform returned ${typeof item}; expected an object or a Record`);
  });
}

/**
 * A record value as the JSON text the contract carries. Written here rather than by
 * `JSON.stringify`, which writes -0 as `0`: Rust and Python keep the sign, and so must the
 * Avro double. A non-finite number, a BigInt or a function is refused.
 */
export function valueJson(value: unknown): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "number":
      if (!Number.isFinite(value)) throw new TypeError(`${value} is not a JSON number`);
      return Object.is(value, -0) ? "-0.0" : JSON.stringify(value);
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "object": {
      if (Array.isArray(value)) return `[${value.map((v) => valueJson(v ?? null)).join(",")}]`;
      const fields = Object.entries(value as object)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${JSON.stringify(k)}:${valueJson(v)}`);
      return `{${fields.join(",")}}`;
    }
    default:
      throw new TypeError(`a ${typeof value} cannot be written as JSON`);
  }
}

/**
 * Round `x` to `digits` decimals as Rust's `(x * 10^digits).round() / 10^digits` does
 * (halves away from zero), not as `Math.round` (halves towards +∞): so that a plugin ported
 * from Rust gives the same number, and the same Avro bytes.
 */
export function roundHalfAway(x: number, digits = 0): number {
  const scale = 10 ** digits;
  const scaled = x * scale;
  let whole = Math.floor(Math.abs(scaled));
  if (Math.abs(scaled) - whole >= 0.5) whole += 1;
  // A negative number that rounds to zero is -0, as in Rust.
  const signed = scaled < 0 || Object.is(scaled, -0) ? -whole : whole;
  return signed / scale;
}
