// The thermostat plugin's native tests: its logic and the fixtures it shares with the Rust
// and Python plugins, with Node's test runner (no Wasm, no weir). Run from this directory.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Config, Message, Rejection, SKIP } from "weir-sdk";
import { checkFixtures } from "weir-sdk/testing";
import { Thermostat } from "./thermostat";

const plugin = (config: [string, string][] = []) => new Thermostat(new Config(config));

function reading(payload: string): any {
  const out = plugin().transform(new Message("plant/7/thermostat/t-100", payload));
  assert.equal(typeof out, "object");
  return out;
}

function rejection(payload: string): string {
  try {
    plugin().transform(new Message("plant/7/thermostat/t-100", payload));
  } catch (e) {
    if (e instanceof Rejection) return e.code;
    throw e;
  }
  throw new Error(`no rejection for ${payload}`);
}

test("fixtures", () => checkFixtures(Thermostat, "../thermostat/fixtures"));

test("all three shapes normalise to Celsius", () => {
  const v1 = reading('{"ts":5,"temp_c":21.5,"setpoint_c":21.0,"fw":"1.4.2"}');
  assert.deepEqual([v1.temperature_c, v1.setpoint_c, v1.payload_version], [21.5, 21, 1]);
  const v2 = reading('{"ts":5,"temperature":{"value":70.7,"unit":"F"},"setpoint":{"value":69.8}}');
  assert.deepEqual([v2.temperature_c, v2.setpoint_c, v2.payload_version], [21.5, 21, 2]);
  const v3 = reading('{"ts":5,"temperature":{"value":21.5,"unit":"C"},"humidity":{"value":41.0,"unit":"%"}}');
  assert.deepEqual([v3.temperature_c, v3.humidity_pct, v3.payload_version, v3.device_id], [21.5, 41, 3, "t-100"]);
});

test("rounding matches the Rust plugin on halves and keeps the sign of zero", () => {
  assert.equal(reading('{"temperature":{"value":-39.973,"unit":"F"}}').temperature_c, -39.99);
  assert.ok(Object.is(reading('{"temperature":{"value":31.999,"unit":"F"}}').temperature_c, -0));
});

test("a missing timestamp uses the receive time", () => {
  const m = new Message("a/t-1", '{"temp_c":20}', [], undefined, 1234);
  assert.equal((plugin().transform(m) as any).ts_ms, 1234);
});

test("bad readings are rejected with specific codes", () => {
  assert.equal(rejection('{"ts":1}'), "reading.missing");
  assert.equal(rejection('{"temp_c":150}'), "reading.out-of-range");
  assert.equal(rejection('{"temperature":{"value":20,"unit":"K"}}'), "reading.unit");
  assert.equal(rejection('{"temp_c":20,"temperature":{"value":20}}'), "payload.ambiguous");
  assert.equal(rejection('{"device":"t-9","temp_c":20}'), "device.mismatch");
  for (const bad of ["not json", '{"temp_c":"20"}', '{"ts":1.5,"temp_c":2}', "[1]", '{"temperature":21}']) {
    assert.equal(rejection(bad), "payload.malformed", bad);
  }
});

test("a heartbeat is skipped", () => {
  assert.equal(plugin().transform(new Message("a/t-100", '{"heartbeat":true}')), SKIP);
});

test("the config is validated", () => {
  assert.throws(() => plugin([["max_c", "warm"]]), /max_c/);
  assert.throws(() => plugin([["min_c", "200"]]), /must be below/);
});
