"""Thermostat readings from three generations of firmware, normalised into one record.

The Rust ``thermostat`` plugin (1.0.0), written in Python: the same schema, the same
fixtures, and byte-identical Avro for every message.

- v1: flat Celsius fields: ``{"ts": .., "temp_c": 21.5, "setpoint_c": 21.0}``
- v2: nested value + unit, Fahrenheit by default: ``{"temperature": {"value": 70.7, "unit": "F"}}``
- v3: v2 plus optional ``"humidity": {"value": 41.0, "unit": "%"}``

The device id is the last topic level (``plant/7/thermostat/t-100``); a payload ``device``
field that disagrees with it is rejected. ``{"heartbeat": true}`` is skipped.
Config: ``min_c`` / ``max_c`` bound a plausible reading (default -50 / 100).
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from weir_sdk import SKIP, ConfigError, Plugin, Rejection, round_half_away

MALFORMED = "payload.malformed"


def _field(obj: dict, name: str, kinds: tuple, what: str) -> Any:
    """``obj[name]`` if it is absent, null or one of ``kinds``; otherwise a rejection."""
    value = obj.get(name)
    if value is None:
        return None
    # JSON's true and false are Python ints too: a number field must not take them.
    if isinstance(value, bool) == (bool in kinds) and isinstance(value, kinds):
        return value
    raise Rejection(MALFORMED, f"payload JSON has the wrong shape: `{name}` must be {what}")


def _number(obj: dict, name: str) -> Optional[float]:
    value = _field(obj, name, (int, float), "a number")
    if value is None:
        return None
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise Rejection(MALFORMED, f"payload JSON has the wrong shape: `{name}` is out of range")
    return value


def _timestamp(obj: dict) -> Optional[int]:
    ts = _field(obj, "ts", (int,), "an integer (ms since the epoch)")
    if ts is not None and not -(2**63) <= ts < 2**63:
        raise Rejection(MALFORMED, "payload JSON has the wrong shape: `ts` is out of range")
    return ts


def _quantity(obj: dict, name: str) -> Optional[dict]:
    q = _field(obj, name, (dict,), "an object with `value` and `unit`")
    if q is None:
        return None
    return {"value": _number(q, "value"), "unit": _field(q, "unit", (str,), "text")}


def _unit(q: dict) -> str:
    """The unit a quantity is in: the device's, or Fahrenheit when it sent none."""
    return q["unit"] if q["unit"] is not None else "F"


def _to_celsius(q: dict, what: str) -> Optional[float]:
    value = q["value"]
    if value is None:
        return None
    unit = _unit(q)
    if unit in ("C", "c", "°C"):
        return value
    if unit in ("F", "f", "°F"):
        return round_half_away((value - 32.0) * 5.0 / 9.0, 2)
    raise Rejection(
        "reading.unit", f'{what} has unknown unit {_quoted(unit)}; expected "C" or "F"'
    )


def _show(x: float) -> str:
    """A number as Rust prints it: ``180`` for a whole number, ``21.5`` otherwise."""
    return str(int(x)) if x.is_integer() else repr(x)


def _quoted(text: str) -> str:
    """Text in double quotes, escaped: ``"t-100"``."""
    return json.dumps(text, ensure_ascii=False)


class Thermostat(Plugin):
    """The plugin: plausible-range bounds from config."""

    def __init__(self, config):
        self.min_c = config.number("min_c", -50.0)
        self.max_c = config.number("max_c", 100.0)
        if self.min_c >= self.max_c:
            raise ConfigError(
                f"min_c ({_show(self.min_c)}) must be below max_c ({_show(self.max_c)})"
            )

    def _in_range(self, what: str, c: float) -> float:
        if self.min_c <= c <= self.max_c:
            return c
        raise Rejection(
            "reading.out-of-range",
            f"{what} {_show(c)} °C is outside {_show(self.min_c)} to {_show(self.max_c)} °C",
        )

    def transform(self, message):
        device_id = message.topic.rsplit("/", 1)[-1]
        if not device_id:
            raise Rejection(
                "topic.unexpected", f"topic {_quoted(message.topic)} does not end in a device id"
            )
        p = message.json()
        if not isinstance(p, dict):
            raise Rejection(MALFORMED, "payload JSON has the wrong shape: expected an object")
        # Every field is read (and its shape checked) before any decision, as the Rust
        # plugin's typed parse does: a payload of the wrong shape is malformed, whatever else.
        device = _field(p, "device", (str,), "text")
        if "heartbeat" in p and p["heartbeat"] is None:
            raise Rejection(MALFORMED, "payload JSON has the wrong shape: `heartbeat` must be true or false")
        heartbeat = _field(p, "heartbeat", (bool,), "true or false")
        temp_c, temperature = _number(p, "temp_c"), _quantity(p, "temperature")
        setpoint_c = _number(p, "setpoint_c")
        setpoint, humidity = _quantity(p, "setpoint"), _quantity(p, "humidity")
        ts, firmware = _timestamp(p), _field(p, "fw", (str,), "text")
        if device is not None and device != device_id:
            raise Rejection(
                "device.mismatch",
                f"payload says device {_quoted(device)} but the topic says {_quoted(device_id)}",
            )
        if heartbeat:
            return SKIP
        if temp_c is not None and temperature is not None:
            raise Rejection(
                "payload.ambiguous", "payload has both `temp_c` (v1) and `temperature` (v2+)"
            )
        if temp_c is not None:
            version, reading, target, rh = 1, temp_c, setpoint_c, None
        elif temperature is not None:
            rh = humidity["value"] if humidity is not None else None
            target = _to_celsius(setpoint, "setpoint") if setpoint is not None else None
            version = 3 if humidity is not None else 2
            reading = _to_celsius(temperature, "temperature")
        else:
            version, reading, target, rh = 0, None, None, None
        if reading is None:
            raise Rejection(
                "reading.missing",
                "no temperature reading: expected `temp_c` (v1) or `temperature.value` (v2+)",
            )
        reading = self._in_range("temperature", reading)
        if target is not None:
            target = self._in_range("setpoint", target)
        if rh is not None and not 0.0 <= rh <= 100.0:
            raise Rejection(
                "reading.out-of-range", f"humidity {_show(rh)} % is outside 0 to 100 %"
            )
        return {
            "device_id": device_id,
            "ts_ms": ts if ts is not None else message.received_at_ms,
            "temperature_c": reading,
            "setpoint_c": target,
            "humidity_pct": rh,
            "payload_version": version,
            "firmware": firmware,
        }
