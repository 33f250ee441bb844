"""Native testing: run a plugin on messages and check its fixtures with plain ``pytest``,
no Wasm involved. The fixture files are the ones ``weir transform`` and the push gate check
against the built component, so native and Wasm are held to one expectation.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterable, Union

import weir_sdk
from weir_sdk import Config, Level, Message, Rejection

__all__ = ["check_fixtures", "parse_input", "run", "take_logs"]

#: Codes whose reason is the SDK's JSON or text decoder's own words, which differ between
#: languages; the code, not the wording, is the contract for these.
PARSER_CODES = ("payload.malformed", "payload.encoding")


def take_logs() -> list[tuple[Level, str]]:
    """The lines logged since the last call."""
    lines = list(weir_sdk._native_logs)
    weir_sdk._native_logs.clear()
    return lines


def run(plugin: Any, message: Message) -> dict:
    """One message through a plugin, rendered as ``weir transform`` prints it (record values
    as the JSON the plugin produced)."""
    try:
        records = weir_sdk.records_of(plugin.transform(message))
    except Rejection as r:
        return {"outcome": "reject", "code": r.code, "reason": r.reason}
    if records is None:
        return {"outcome": "skip"}
    return {
        "outcome": "emit",
        "records": [
            {
                "key": r.key,
                "value": json.loads(weir_sdk.value_json(r.value)),
                "headers": dict(r.headers),
            }
            for r in records
        ],
    }


def parse_input(line: str) -> Message:
    """One line of ``input.jsonl``: ``{"topic": .., "payload": "<text>"}`` (or
    ``"payload_base64"``), optionally ``"properties"``, ``"content_type"``,
    ``"received_at_ms"``."""
    doc = json.loads(line)
    if ("payload" in doc) == ("payload_base64" in doc):
        raise ValueError("give `payload` (text) or `payload_base64`, exactly one")
    if "payload" in doc:
        payload = doc["payload"].encode()
    else:
        payload = base64.b64decode(doc["payload_base64"].strip(), validate=True)
    properties = doc.get("properties") or []
    if isinstance(properties, dict):
        properties = list(properties.items())
    return Message(
        topic=doc["topic"],
        payload=payload,
        properties=[(str(k), str(v)) for k, v in properties],
        content_type=doc.get("content_type"),
        received_at_ms=doc.get("received_at_ms", 0),
    )


def _comparable(outcome: dict) -> dict:
    if outcome.get("outcome") == "reject" and outcome.get("code") in PARSER_CODES:
        return {k: v for k, v in outcome.items() if k != "reason"}
    return outcome


def check_fixtures(
    plugin_class: type,
    directory: Union[str, Path],
    config: Iterable[tuple[str, str]] = (),
) -> None:
    """Every line of ``directory/input.jsonl`` gives the matching line of
    ``directory/expected.jsonl``; an ``AssertionError`` names the first that does not.

    Rejections compare code and reason, except that for :data:`PARSER_CODES` only the code
    is compared (the reason is the language's own parser's)."""
    directory = Path(directory)

    def lines(name: str) -> list[str]:
        text = (directory / name).read_text(encoding="utf-8")
        return [line for line in text.splitlines() if line.strip()]

    inputs, expected = lines("input.jsonl"), lines("expected.jsonl")
    assert len(inputs) == len(expected), (
        f"{directory}: input.jsonl has {len(inputs)} lines but expected.jsonl has "
        f"{len(expected)}"
    )
    plugin = plugin_class(Config(config))
    for n, (line, want_line) in enumerate(zip(inputs, expected), start=1):
        got = run(plugin, parse_input(line))
        want = json.loads(want_line)
        assert _comparable(got) == _comparable(want), (
            f"fixture line {n} of {directory}:\n  input: {line}\n"
            f"  got:   {json.dumps(got, ensure_ascii=False)}\n"
            f"  want:  {want_line}"
        )
