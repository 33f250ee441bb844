/**
 * Native testing: run a plugin on messages and check its fixtures with Node's test runner,
 * no Wasm involved. The fixture files are the ones `weir transform` and the promote gate
 * check against the built component, so native and Wasm are held to one expectation.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Config, Message, Plugin, PluginClass, Rejection, recordsOf, valueJson } from "./index";

/** Codes whose reason is the SDK's JSON or text decoder's own words, which differ between
 * languages; for these the code, not the wording, is the contract. */
export const PARSER_CODES = ["payload.malformed", "payload.encoding"];

/** One message through a plugin, rendered as `weir transform` prints it. */
export function run(plugin: Plugin, message: Message): object {
  let records;
  try {
    records = recordsOf(plugin.transform(message));
  } catch (e) {
    if (e instanceof Rejection) return { outcome: "reject", code: e.code, reason: e.reason };
    throw e;
  }
  if (records === null) return { outcome: "skip" };
  return {
    outcome: "emit",
    records: records.map((r) => ({
      key: r.key ?? null,
      value: JSON.parse(valueJson(r.value)),
      headers: Object.fromEntries(r.headers),
    })),
  };
}

/** One line of `input.jsonl`. */
export function parseInput(line: string): Message {
  const doc = JSON.parse(line);
  if (("payload" in doc) === ("payload_base64" in doc)) {
    throw new Error("give `payload` (text) or `payload_base64`, exactly one");
  }
  const payload =
    "payload" in doc ? doc.payload : Uint8Array.from(atob(doc.payload_base64.trim()), (c) => c.charCodeAt(0));
  const properties: [string, string][] = Array.isArray(doc.properties)
    ? doc.properties
    : Object.entries(doc.properties ?? {}).map(([k, v]) => [k, String(v)]);
  return new Message(doc.topic, payload, properties, doc.content_type, doc.received_at_ms ?? 0);
}

/** An outcome as compared: a parser's rejection without its reason. */
function comparable(outcome: { [k: string]: unknown }): string {
  const copy = { ...outcome };
  if (copy.outcome === "reject" && PARSER_CODES.includes(copy.code as string)) delete copy.reason;
  return canonical(copy);
}

/** JSON with object keys sorted, numbers as values (21 and 21.0 alike). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as { [k: string]: unknown })[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

/**
 * Every line of `dir/input.jsonl` gives the matching line of `dir/expected.jsonl`; throws
 * naming the first that does not. Rejections compare code and reason, except that for
 * {@link PARSER_CODES} only the code is compared.
 */
export function checkFixtures(plugin: PluginClass, dir: string, config: [string, string][] = []): void {
  const lines = (name: string) =>
    readFileSync(join(dir, name), "utf8")
      .split("\n")
      .filter((l) => l.trim().length > 0);
  const inputs = lines("input.jsonl");
  const expected = lines("expected.jsonl");
  if (inputs.length !== expected.length) {
    throw new Error(`${dir}: input.jsonl has ${inputs.length} lines but expected.jsonl has ${expected.length}`);
  }
  const p = new plugin(new Config(config));
  inputs.forEach((line, i) => {
    const got = run(p, parseInput(line)) as { [k: string]: unknown };
    const want = JSON.parse(expected[i]);
    if (comparable(got) !== comparable(want)) {
      throw new Error(
        `fixture line ${i + 1} of ${dir}:\n  input: ${line}\n  got:   ${JSON.stringify(got)}\n  want:  ${expected[i]}`,
      );
    }
  });
}
