"""The thermostat plugin's native tests: its logic and the fixtures it shares with the Rust
plugin, with plain pytest (no Wasm, no weir)."""

from pathlib import Path

import pytest
from weir_sdk import SKIP, Config, ConfigError, Message, Rejection
from weir_sdk.testing import check_fixtures

from thermostat import Thermostat

FIXTURES = Path(__file__).parent / "../thermostat/fixtures"


def plugin(**config):
    return Thermostat(Config(config.items()))


def reading(payload):
    out = plugin().transform(Message("plant/7/thermostat/t-100", payload))
    assert isinstance(out, dict), out
    return out


def rejection(payload):
    with pytest.raises(Rejection) as r:
        plugin().transform(Message("plant/7/thermostat/t-100", payload))
    return r.value.code


def test_fixtures():
    check_fixtures(Thermostat, FIXTURES)


def test_all_three_shapes_normalise_to_celsius():
    v1 = reading('{"ts":5,"temp_c":21.5,"setpoint_c":21.0,"fw":"1.4.2"}')
    assert (v1["temperature_c"], v1["setpoint_c"], v1["payload_version"]) == (21.5, 21.0, 1)
    v2 = reading('{"ts":5,"temperature":{"value":70.7,"unit":"F"},"setpoint":{"value":69.8}}')
    assert (v2["temperature_c"], v2["setpoint_c"], v2["payload_version"]) == (21.5, 21.0, 2)
    v3 = reading(
        '{"ts":5,"temperature":{"value":21.5,"unit":"C"},"humidity":{"value":41.0,"unit":"%"}}'
    )
    assert (v3["temperature_c"], v3["humidity_pct"], v3["payload_version"]) == (21.5, 41.0, 3)
    assert v3["device_id"] == "t-100"


def test_numbers_are_floats_for_the_double_fields():
    r = reading('{"ts":5,"temp_c":22,"setpoint_c":21}')
    assert type(r["temperature_c"]) is float and type(r["setpoint_c"]) is float


def test_rounding_matches_the_rust_plugin_on_halves():
    # -39.973 °F is exactly -3998.5 hundredths of a °C in binary floating point: Rust rounds
    # the half away from zero (-39.99), Python's round() to even (-39.98).
    r = reading('{"temperature":{"value":-39.973,"unit":"F"}}')
    assert r["temperature_c"] == -39.99


def test_missing_timestamp_uses_receive_time():
    m = Message("a/t-1", '{"temp_c":20}', received_at_ms=1234)
    assert plugin().transform(m)["ts_ms"] == 1234


def test_bad_readings_are_rejected_with_specific_codes():
    assert rejection('{"ts":1}') == "reading.missing"
    assert rejection('{"temperature":{"unit":"F"}}') == "reading.missing"
    assert rejection('{"temp_c":150}') == "reading.out-of-range"
    assert rejection('{"temperature":{"value":-80,"unit":"F"}}') == "reading.out-of-range"
    assert rejection('{"temperature":{"value":20,"unit":"K"}}') == "reading.unit"
    assert (
        rejection('{"temperature":{"value":20,"unit":"C"},"humidity":{"value":140}}')
        == "reading.out-of-range"
    )
    assert rejection('{"temp_c":20,"temperature":{"value":20}}') == "payload.ambiguous"
    assert rejection('{"device":"t-9","temp_c":20}') == "device.mismatch"
    assert rejection("not json") == "payload.malformed"


@pytest.mark.parametrize(
    "payload",
    [
        '{"temp_c":"20"}',
        '{"temp_c":true}',
        '{"ts":1.5,"temp_c":20}',
        '{"temperature":21}',
        '{"temp_c":NaN}',
        '{"temp_c":1e400}',
        "[1,2]",
        '{"device":"t-9","temp_c":"x"}',
    ],
)
def test_a_payload_of_the_wrong_shape_is_malformed(payload):
    assert rejection(payload) == "payload.malformed"


def test_heartbeat_is_skipped():
    assert plugin().transform(Message("a/t-100", '{"heartbeat":true}')) is SKIP


def test_config_is_validated():
    with pytest.raises(ConfigError, match="max_c"):
        plugin(max_c="warm")
    with pytest.raises(ConfigError):
        plugin(min_c="200")
    narrow = plugin(max_c="30")
    with pytest.raises(Rejection):
        narrow.transform(Message("a/t", '{"temp_c":35}'))
