// The TypeScript SDK's own tests: messages, config, outcomes, JSON and rounding.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Config, ConfigError, Message, Record, Rejection, SKIP, log, recordsOf, roundHalfAway, takeLogs, valueJson } from "weir-sdk";
import { parseInput, run } from "weir-sdk/testing";

test("topic levels and properties", () => {
  const m = new Message("fleet/v-17/gps", "{}", [["fw", "1"], ["fw", "2"]]);
  assert.equal(m.topicLevel(1), "v-17");
  assert.equal(m.topicLevel(-1), "gps");
  assert.equal(m.topicLevel(3), undefined);
  assert.equal(m.property("fw"), "1");
});

test("payload text and JSON", () => {
  assert.equal(new Message("t", "héllo").text(), "héllo");
  assert.throws(() => new Message("t", new Uint8Array([0xff])).text(), (e: Rejection) => e.code === "payload.encoding");
  assert.deepEqual(new Message("t", '{"a":[1,2.5]}').json(), { a: [1, 2.5] });
  for (const bad of ["{", "NaN", "{'a':1}"]) {
    assert.throws(() => new Message("t", bad).json(), (e: Rejection) => e.code === "payload.malformed", bad);
  }
});

test("config reads the last value and names bad keys", () => {
  const c = new Config([["n", "1"], ["n", "2.5"], ["on", "true"]]);
  assert.equal(c.get("n"), "2.5");
  assert.equal(c.get("x", "d"), "d");
  assert.equal(c.number("n", 0), 2.5);
  assert.equal(c.flag("on", false), true);
  for (const [key, value, call] of [["v", "warm", "number"], ["v", "Infinity", "number"], ["v", "", "number"], ["v", "yes", "flag"]]) {
    const cfg = new Config([[key, value]]);
    assert.throws(() => (call === "number" ? cfg.number(key, 0) : cfg.flag(key, false)), ConfigError);
  }
});

test("what transform returns becomes records", () => {
  assert.equal(recordsOf(SKIP), null);
  assert.deepEqual(recordsOf({ a: 1 }), [new Record({ a: 1 })]);
  assert.deepEqual(recordsOf([]), []);
  const keyed = new Record({ a: 1 }, "k", [["h", "v"]]);
  assert.deepEqual(recordsOf([{ a: 1 }, keyed]), [new Record({ a: 1 }), keyed]);
  for (const bad of [undefined, null, "text", [1]]) assert.throws(() => recordsOf(bad), TypeError);
});

test("values are compact JSON that keeps the sign of zero", () => {
  assert.equal(valueJson({ t: "°C", x: 1.5, n: null, skip: undefined, l: [1, -0] }), '{"t":"°C","x":1.5,"n":null,"l":[1,-0.0]}');
  assert.throws(() => valueJson({ x: NaN }), TypeError);
  assert.throws(() => valueJson({ x: 1n }), TypeError);
});

test("rounding takes halves away from zero, like Rust", () => {
  assert.equal(roundHalfAway(2.5), 3);
  assert.equal(roundHalfAway(-2.5), -3);
  assert.equal(Math.round(-2.5), -2);
  assert.equal(roundHalfAway(-39.985, 2), -39.99);
  assert.ok(Object.is(roundHalfAway(-0.0004, 2), -0));
});

test("run renders outcomes as weir transform prints them, and logs are kept natively", () => {
  const plugin = {
    transform(m: Message) {
      log("info", "seen");
      if (m.text() === "skip") return SKIP;
      if (m.text() === "reject") throw new Rejection("test.rejected", "on request");
      return new Record({ text: m.text().toUpperCase() }, m.text());
    },
  };
  assert.deepEqual(run(plugin, new Message("t", "a")), {
    outcome: "emit",
    records: [{ key: "a", value: { text: "A" }, headers: {} }],
  });
  assert.deepEqual(run(plugin, new Message("t", "skip")), { outcome: "skip" });
  assert.equal((run(plugin, new Message("t", "reject")) as { code: string }).code, "test.rejected");
  assert.equal(takeLogs().length, 3);
  assert.deepEqual(takeLogs(), []);
});

test("input lines parse like weir transform's", () => {
  const m = parseInput('{"topic":"a/b","payload_base64":"aGk=","properties":{"k":"v"},"received_at_ms":5}');
  assert.deepEqual([new TextDecoder().decode(m.payload), m.properties, m.receivedAtMs], ["hi", [["k", "v"]], 5]);
  assert.throws(() => parseInput('{"topic":"a","payload":"x","payload_base64":"eA=="}'));
});
