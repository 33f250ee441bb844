/**
 * Thermostat readings from three generations of firmware, normalised into one record.
 *
 * The Rust `thermostat` plugin (1.0.0), written in TypeScript: the same schema, the same
 * fixtures, and byte-identical Avro for every message.
 *
 * - v1: flat Celsius fields: `{"ts": .., "temp_c": 21.5, "setpoint_c": 21.0}`
 * - v2: nested value + unit, Fahrenheit by default: `{"temperature": {"value": 70.7, "unit": "F"}}`
 * - v3: v2 plus optional `"humidity": {"value": 41.0, "unit": "%"}`
 *
 * The device id is the last topic level; a payload `device` field that disagrees with it
 * is rejected. `{"heartbeat": true}` is skipped. Config: `min_c` / `max_c` (default -50 / 100).
 */

import { Config, ConfigError, Message, Plugin, Rejection, SKIP, roundHalfAway } from "weir-sdk";

const MALFORMED = "payload.malformed";

type Obj = { [k: string]: unknown };

function wrongShape(what: string): never {
  throw new Rejection(MALFORMED, `payload JSON has the wrong shape: ${what}`);
}

/** `obj[name]` if absent or null (as undefined) or of the given kind; else a rejection. */
function field(obj: Obj, name: string, kind: "string" | "boolean" | "object", what: string): any {
  const v = obj[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v === kind && !(kind === "object" && Array.isArray(v))) return v;
  wrongShape(`\`${name}\` must be ${what}`);
}

function number(obj: Obj, name: string): number | undefined {
  const v = obj[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number") wrongShape(`\`${name}\` must be a number`);
  if (!Number.isFinite(v)) wrongShape(`\`${name}\` is out of range`);
  return v;
}

function timestamp(obj: Obj): number | undefined {
  const v = number(obj, "ts");
  if (v !== undefined && !Number.isInteger(v)) wrongShape("`ts` must be an integer (ms since the epoch)");
  // Beyond 2^53 a JSON number is not the integer that was sent: refuse it rather than
  // publish another timestamp.
  if (v !== undefined && !Number.isSafeInteger(v)) wrongShape("`ts` is out of range");
  return v;
}

type Quantity = { value: number | undefined; unit: string | undefined };

function quantity(obj: Obj, name: string): Quantity | undefined {
  const q = field(obj, name, "object", "an object with `value` and `unit`");
  if (q === undefined) return undefined;
  return { value: number(q, "value"), unit: field(q, "unit", "string", "text") };
}

/** The unit a quantity is in: the device's, or Fahrenheit when it sent none. */
const unit = (q: Quantity) => q.unit ?? "F";

function toCelsius(q: Quantity, what: string): number | undefined {
  if (q.value === undefined) return undefined;
  const u = unit(q);
  if (u === "C" || u === "c" || u === "°C") return q.value;
  if (u === "F" || u === "f" || u === "°F") return roundHalfAway(((q.value - 32.0) * 5.0) / 9.0, 2);
  throw new Rejection("reading.unit", `${what} has unknown unit ${JSON.stringify(u)}; expected "C" or "F"`);
}

/** A number as Rust prints it: `180` for a whole number, `21.5` otherwise. */
const show = (x: number) =>
  Number.isInteger(x) ? BigInt(x).toString() : Number.isFinite(x) ? String(x) : x > 0 ? "inf" : "-inf";

export class Thermostat implements Plugin {
  readonly minC: number;
  readonly maxC: number;

  constructor(config: Config) {
    this.minC = config.number("min_c", -50.0);
    this.maxC = config.number("max_c", 100.0);
    if (this.minC >= this.maxC) {
      throw new ConfigError(`min_c (${show(this.minC)}) must be below max_c (${show(this.maxC)})`);
    }
  }

  private inRange(what: string, c: number): number {
    if (this.minC <= c && c <= this.maxC) return c;
    throw new Rejection(
      "reading.out-of-range",
      `${what} ${show(c)} °C is outside ${show(this.minC)} to ${show(this.maxC)} °C`,
    );
  }

  transform(message: Message) {
    const deviceId = message.topic.slice(message.topic.lastIndexOf("/") + 1);
    if (deviceId === "") {
      throw new Rejection("topic.unexpected", `topic ${JSON.stringify(message.topic)} does not end in a device id`);
    }
    const p = message.json();
    if (typeof p !== "object" || p === null || Array.isArray(p)) wrongShape("expected an object");
    const o = p as Obj;
    // Every field is read (and its shape checked) before any decision, as the Rust
    // plugin's typed parse does.
    const device: string | undefined = field(o, "device", "string", "text");
    if (o.heartbeat === null) wrongShape("`heartbeat` must be true or false");
    const heartbeat: boolean | undefined = field(o, "heartbeat", "boolean", "true or false");
    const tempC = number(o, "temp_c");
    const temperature = quantity(o, "temperature");
    const setpointC = number(o, "setpoint_c");
    const setpoint = quantity(o, "setpoint");
    const humidity = quantity(o, "humidity");
    const ts = timestamp(o);
    const firmware: string | undefined = field(o, "fw", "string", "text");
    if (device !== undefined && device !== deviceId) {
      throw new Rejection(
        "device.mismatch",
        `payload says device ${JSON.stringify(device)} but the topic says ${JSON.stringify(deviceId)}`,
      );
    }
    if (heartbeat) return SKIP;
    if (tempC !== undefined && temperature !== undefined) {
      throw new Rejection("payload.ambiguous", "payload has both `temp_c` (v1) and `temperature` (v2+)");
    }
    let version = 0;
    let reading: number | undefined;
    let target: number | undefined;
    let rh: number | undefined;
    if (tempC !== undefined) {
      [version, reading, target] = [1, tempC, setpointC];
    } else if (temperature !== undefined) {
      rh = humidity?.value;
      target = setpoint !== undefined ? toCelsius(setpoint, "setpoint") : undefined;
      version = humidity !== undefined ? 3 : 2;
      reading = toCelsius(temperature, "temperature");
    }
    if (reading === undefined) {
      throw new Rejection(
        "reading.missing",
        "no temperature reading: expected `temp_c` (v1) or `temperature.value` (v2+)",
      );
    }
    reading = this.inRange("temperature", reading);
    if (target !== undefined) target = this.inRange("setpoint", target);
    if (rh !== undefined && !(0.0 <= rh && rh <= 100.0)) {
      throw new Rejection("reading.out-of-range", `humidity ${show(rh)} % is outside 0 to 100 %`);
    }
    return {
      device_id: deviceId,
      ts_ms: ts ?? message.receivedAtMs,
      temperature_c: reading,
      setpoint_c: target ?? null,
      humidity_pct: rh ?? null,
      payload_version: version,
      firmware: firmware ?? null,
    };
  }
}
