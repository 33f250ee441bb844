"""The Python SDK's own tests: messages, config, outcomes, fixtures and the component glue
(against a stand-in for the bindings componentize-py generates at build time)."""

import json
import os
import random
import sys
import time
import types as pytypes
from dataclasses import dataclass
from enum import Enum

import pytest

import weir_sdk
from weir_sdk import SKIP, Config, ConfigError, Level, Message, Plugin, Record, Rejection
from weir_sdk.testing import check_fixtures, parse_input, run, take_logs


def test_topic_levels_and_properties():
    m = Message("fleet/v-17/gps", b"{}", properties=[("fw", "1"), ("fw", "2")])
    assert m.topic_level(1) == "v-17"
    assert m.topic_level(-1) == "gps"
    assert m.topic_level(3) is None and m.topic_level(-4) is None
    assert m.property("fw") == "1" and m.property("x") is None


def test_payload_text_and_json():
    assert Message("t", "héllo").text() == "héllo"
    with pytest.raises(Rejection) as r:
        Message("t", b"\xff").text()
    assert r.value.code == "payload.encoding"
    assert Message("t", b'{"a":[1,2.5]}').json() == {"a": [1, 2.5]}
    for bad in [b"{", b'{"a":NaN}', b"Infinity", b"\xff"]:
        with pytest.raises(Rejection) as r:
            Message("t", bad).json()
        assert r.value.code == "payload.malformed", bad
        assert r.value.reason.startswith("payload is not valid JSON"), r.value.reason


def test_config_reads_the_last_value_and_names_bad_keys():
    c = Config([("n", "1"), ("n", "2.5"), ("on", "true"), ("k", "7")])
    assert c.get("n") == "2.5" and c.get("x", "d") == "d"
    assert c.number("n", 0) == 2.5 and c.number("x", 3.0) == 3.0
    assert c.flag("on", False) is True and c.integer("k", 0) == 7
    for method, value in [("number", "warm"), ("number", "inf"), ("integer", "1.5"), ("flag", "yes")]:
        with pytest.raises(ConfigError, match="config key `v` = '.*' is invalid"):
            getattr(Config([("v", value)]), method)("v", 0)


def test_what_transform_returns_becomes_records():
    assert weir_sdk.records_of(SKIP) is None
    assert weir_sdk.records_of({"a": 1}) == [Record({"a": 1})]
    assert weir_sdk.records_of([]) == []
    keyed = Record({"a": 1}, key="k", headers=[("h", "v")])
    assert weir_sdk.records_of([{"a": 1}, keyed]) == [Record({"a": 1}), keyed]
    for bad in [None, "text", [1], Record("not a dict")]:
        with pytest.raises(TypeError):
            weir_sdk.records_of(bad)


def test_values_are_strict_compact_json():
    assert weir_sdk.value_json({"t": "°C", "x": 1.5}) == '{"t":"°C","x":1.5}'
    with pytest.raises(ValueError):
        weir_sdk.value_json({"x": float("nan")})


def test_rounding_takes_halves_away_from_zero():
    assert weir_sdk.round_half_away(2.5) == 3.0 and round(2.5) == 2
    assert weir_sdk.round_half_away(-2.5) == -3.0
    assert weir_sdk.round_half_away(0.025, 2) == 0.03
    assert weir_sdk.round_half_away(-39.985, 2) == -39.99
    assert weir_sdk.round_half_away(1.234, 2) == 1.23


def test_input_lines_parse_like_weir_transform():
    m = parse_input('{"topic":"a/b","payload_base64":"aGk=","properties":{"k":"v"},"received_at_ms":5}')
    assert (m.payload, list(m.properties), m.received_at_ms) == (b"hi", [("k", "v")], 5)
    with pytest.raises(ValueError):
        parse_input('{"topic":"a","payload":"x","payload_base64":"eA=="}')


class Upper(Plugin):
    def transform(self, message):
        text = message.text()
        if text == "skip":
            return SKIP
        if text == "reject":
            raise Rejection("test.rejected", "on request")
        weir_sdk.log(Level.INFO, "seen")
        return Record({"text": text.upper()}, key=text)


def test_run_renders_outcomes_as_weir_transform_prints_them():
    p = Upper(Config())
    assert run(p, Message("t", "a")) == {
        "outcome": "emit",
        "records": [{"key": "a", "value": {"text": "A"}, "headers": {}}],
    }
    assert run(p, Message("t", "skip")) == {"outcome": "skip"}
    assert run(p, Message("t", "reject"))["code"] == "test.rejected"
    assert take_logs() == [(Level.INFO, "seen")]
    assert take_logs() == []


def test_check_fixtures_names_the_line_that_differs(tmp_path):
    (tmp_path / "input.jsonl").write_text('{"topic":"t","payload":"a"}\n{"topic":"t","payload":"b"}\n')
    good = {"outcome": "emit", "records": [{"key": "a", "value": {"text": "A"}, "headers": {}}]}
    bad = {"outcome": "skip"}
    (tmp_path / "expected.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(AssertionError, match="fixture line 2"):
        check_fixtures(Upper, tmp_path)


def test_parser_rejections_compare_by_code_only(tmp_path):
    class Parse(Plugin):
        def transform(self, message):
            return message.json()

    (tmp_path / "input.jsonl").write_text('{"topic":"t","payload":"{"}\n')
    want = {"outcome": "reject", "code": "payload.malformed", "reason": "another parser's words"}
    (tmp_path / "expected.jsonl").write_text(json.dumps(want) + "\n")
    check_fixtures(Parse, tmp_path)


@pytest.fixture
def component(monkeypatch):
    """weir_sdk.component over stand-ins for the generated bindings."""

    @dataclass
    class Rec:
        key: object
        value: str
        headers: list

    @dataclass
    class Rej:
        code: str
        reason: str

    @dataclass
    class Info:
        name: str
        version: str
        schema: str

    @dataclass
    class Emit:
        value: list

    @dataclass
    class Reject:
        value: object

    class Skip:
        pass

    class WitLevel(Enum):
        TRACE, DEBUG, INFO, WARN, ERROR = range(5)

    @dataclass(frozen=True)
    class Err(Exception):
        value: object

    logged = []
    types = pytypes.SimpleNamespace(
        Record=Rec, Rejection=Rej, PluginInfo=Info, Outcome_Emit=Emit,
        Outcome_Reject=Reject, Outcome_Skip=Skip, Level=WitLevel,
    )
    host = pytypes.SimpleNamespace(log=lambda level, msg: logged.append((level.name, msg)))
    imports = pytypes.ModuleType("wit_world.imports")
    imports.types, imports.host = types, host
    monkeypatch.setitem(sys.modules, "wit_world", pytypes.ModuleType("wit_world"))
    monkeypatch.setitem(sys.modules, "wit_world.imports", imports)
    cpt = pytypes.ModuleType("componentize_py_types")
    cpt.Err = Err
    monkeypatch.setitem(sys.modules, "componentize_py_types", cpt)
    monkeypatch.delitem(sys.modules, "weir_sdk.component", raising=False)
    monkeypatch.setattr(weir_sdk, "_log_sink", weir_sdk._log_sink)
    # export() takes the clock and randomness away: give them back to pytest afterwards.
    for module, names in [(time, dir(time)), (random, random.__all__), (os, ["urandom"])]:
        for name in names:
            if callable(getattr(module, name)):
                monkeypatch.setattr(module, name, getattr(module, name))
    import weir_sdk.component as glue

    return glue, pytypes.SimpleNamespace(Emit=Emit, Reject=Reject, Skip=Skip, Err=Err), logged


def test_the_glue_maps_outcomes_and_traps_on_a_bug(component):
    glue, t, logged = component

    class Buggy(Plugin):
        def transform(self, message):
            if message.payload == b"bug":
                return {"x": 1} / 0
            if message.payload == b"nan":
                return {"x": float("nan")}
            return Upper.transform(self, message)

    world = glue.export(Buggy, name="p", version="1.0.0", schema="{}")()
    assert world.describe().name == "p"
    msg = lambda payload: pytypes.SimpleNamespace(
        topic="t", payload=payload, properties=[], content_type=None, received_at_ms=0
    )
    emit, skip, reject, nan = world.process([msg(b"a"), msg(b"skip"), msg(b"reject"), msg(b"nan")])
    assert isinstance(emit, t.Emit) and emit.value[0].value == '{"text":"A"}'
    assert isinstance(skip, t.Skip)
    assert isinstance(reject, t.Reject) and reject.value.code == "test.rejected"
    assert nan.value.code == "record.serialize"
    assert ("INFO", "seen") in logged
    with pytest.raises(TypeError):
        world.process([msg(b"bug")])
    level, line = logged[-1]
    assert level == "ERROR" and line.startswith("plugin raised TypeError: ")
    assert "in transform)" in line


def test_the_glue_refuses_a_config_with_the_plugins_words(component):
    glue, t, _ = component

    class Picky(Plugin):
        def __init__(self, config):
            if config.get("ok") != "yes":
                raise ConfigError("config key `ok` must be yes")

    class Broken(Plugin):
        def __init__(self, config):
            raise KeyError("boom")

    with pytest.raises(t.Err) as e:
        glue.export(Picky, name="p", version="1", schema="{}")().init([])
    assert e.value.value == "config key `ok` must be yes"
    with pytest.raises(t.Err) as e:
        glue.export(Broken, name="p", version="1", schema="{}")().init([])
    assert e.value.value.startswith("the plugin's __init__ raised KeyError: 'boom'")
    # Without init, the empty config is tried, and its refusal rejects the batch.
    out = glue.export(Picky, name="p", version="1", schema="{}")().process([object()])
    assert out[0].value.code == "plugin.config"


def test_the_glue_takes_the_clock_and_randomness_away_as_it_is_imported(component):
    glue, _, _ = component
    for call in [
        time.time,
        time.monotonic,
        time.localtime,
        lambda: time.strftime("%Y"),
        random.random,
        lambda: random.randint(1, 2),
        lambda: os.urandom(4),
    ]:
        with pytest.raises(glue.NotGranted):
            call()
    assert random.Random(7).random() == random.Random(7).random()
    # Formatting a time the plugin gives is deterministic, and allowed.
    assert time.strftime("%Y-%m-%d", time.gmtime(0)) == "1970-01-01"
    import datetime

    assert datetime.datetime(2026, 1, 2).strftime("%Y/%m/%d") == "2026/01/02"
