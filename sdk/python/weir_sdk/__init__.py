"""Write weir transform plugins in Python.

A plugin is a class built once per Wasm instance from the cohort's config, with one method
that turns an MQTT message into records of the plugin's Avro schema, or rejects it::

    from weir_sdk import Plugin, Rejection, SKIP

    class Echo(Plugin):
        def __init__(self, config):
            self.prefix = config.get("prefix", "")

        def transform(self, message):
            return {"text": self.prefix + message.text()}

``transform`` returns

- a ``dict``: one record with that value (it must match the Avro schema; weir checks),
- a :class:`Record`: one record with a key or headers of its own,
- a ``list`` of either: any number of records, possibly none,
- :data:`SKIP`: the message is valid but carries nothing to publish (a heartbeat),

or raises :class:`Rejection` (code and reason) to quarantine the message. Any other
exception is a bug: weir quarantines the message as ``plugin.trap`` with the exception.

The plugin's name and version come from ``pyproject.toml`` (``[project]``), its schema and
class from ``[tool.weir]``; ``cargo xtask plugins`` builds it into a Wasm component that
imports nothing but weir's ``log``. Inside weir there is no clock, randomness, file system
or network: the same message through the same component gives the same bytes, always.

The module has no dependency on the Wasm build, so plugin logic is tested with plain
``pytest`` (see :mod:`weir_sdk.testing`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Iterable, Optional, Sequence, Union

__all__ = [
    "Config",
    "ConfigError",
    "Level",
    "Message",
    "Plugin",
    "Record",
    "Rejection",
    "SKIP",
    "log",
]


class Level(IntEnum):
    """Log severities, as in the contract."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


#: Where :func:`log` sends a line: weir's ``log`` import inside Wasm, a list natively.
_log_sink: Callable[[Level, str], None]
_native_logs: list[tuple[Level, str]] = []


def _keep_natively(level: Level, message: str) -> None:
    _native_logs.append((level, message))


_log_sink = _keep_natively


def log(level: Level, message: str) -> None:
    """Write a line to weir's log, attributed to the plugin and the cohort.

    Cheap, but not free: do not log per message on a healthy path. Natively the line is
    kept for :func:`weir_sdk.testing.take_logs`.
    """
    _log_sink(level, message)


class Rejection(Exception):
    """A message the plugin refuses: a stable dotted code and a sentence for a human.

    Codes are 1 to 64 characters of ``a-z``, ``0-9``, ``.``, ``-`` and ``_``, starting with
    a letter (``reading.out-of-range``); they become Kafka headers and metric labels, so
    they must not carry message data. The reason may.
    """

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Rejection)
            and (self.code, self.reason) == (other.code, other.reason)
        )

    def __hash__(self) -> int:
        return hash((self.code, self.reason))

    def __repr__(self) -> str:
        return f"Rejection({self.code!r}, {self.reason!r})"


class _Skip:
    """The type of :data:`SKIP`."""

    _instance: Optional["_Skip"] = None

    def __new__(cls) -> "_Skip":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SKIP"


#: Return this from ``transform`` for a valid message with nothing to publish.
SKIP = _Skip()


@dataclass
class Record:
    """One output record: a value matching the schema, an optional Kafka key and headers.

    Without a key, the cohort's key template decides. Header names starting with ``weir.``
    are reserved.
    """

    value: dict
    key: Optional[str] = None
    headers: Sequence[tuple[str, str]] = ()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass
class Message:
    """One MQTT message, exactly as the broker delivered it."""

    topic: str
    payload: bytes
    properties: Sequence[tuple[str, str]] = ()
    content_type: Optional[str] = None
    #: When weir received it (ms since the Unix epoch); fixed, so a replay sees the same.
    received_at_ms: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.payload, str):
            self.payload = self.payload.encode()

    def topic_level(self, index: int) -> Optional[str]:
        """The ``index``-th level of the topic (0-based; negative counts from the end).

        Level 1 of ``fleet/v-17/gps`` is ``v-17``; level -1 is ``gps``.
        """
        levels = self.topic.split("/")
        if -len(levels) <= index < len(levels):
            return levels[index]
        return None

    def property(self, name: str) -> Optional[str]:
        """The first MQTT v5 user property called ``name``."""
        for key, value in self.properties:
            if key == name:
                return value
        return None

    def text(self) -> str:
        """The payload as UTF-8 text, or a ``payload.encoding`` rejection."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejection(
                "payload.encoding", f"payload is not UTF-8 text: {e.reason} at byte {e.start}"
            ) from None

    def json(self) -> Any:
        """The payload parsed as strict JSON, or a ``payload.malformed`` rejection.

        Strict: ``NaN`` and ``Infinity`` are refused, as in every other JSON parser weir
        works with, so that a payload reads the same in every plugin language.
        """
        try:
            return json.loads(self.payload.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as e:
            raise Rejection(
                "payload.malformed", f"payload is not valid JSON: it is not UTF-8 ({e.reason})"
            ) from None
        except json.JSONDecodeError as e:
            raise Rejection(
                "payload.malformed",
                f"payload is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
            ) from None
        except ValueError as e:
            raise Rejection("payload.malformed", f"payload is not valid JSON: {e}") from None


class ConfigError(Exception):
    """A cohort config the plugin refuses; weir refuses to start (or to load this version)
    and shows the message."""


class Config:
    """The cohort's plugin config: the ``config`` table of weir.toml, as key/value strings."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()):
        self._pairs = [(str(k), str(v)) for k, v in pairs]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """All pairs, in order."""
        return list(self._pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key`` (the last one given), or ``default``."""
        for k, v in reversed(self._pairs):
            if k == key:
                return v
        return default

    def number(self, key: str, default: float) -> float:
        """The value of ``key`` as a finite number, ``default`` when absent; a
        :class:`ConfigError` naming the key when it is not one."""
        return self._parse(key, default, _finite_float, "a number")

    def integer(self, key: str, default: int) -> int:
        """The value of ``key`` as an integer, ``default`` when absent."""
        return self._parse(key, default, lambda v: int(v.strip(), 10), "an integer")

    def flag(self, key: str, default: bool) -> bool:
        """The value of ``key`` as ``true`` or ``false``, ``default`` when absent."""
        return self._parse(key, default, _bool, "true or false")

    def _parse(self, key: str, default: Any, parse: Callable[[str], Any], what: str) -> Any:
        value = self.get(key)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            raise ConfigError(f"config key `{key}` = {value!r} is invalid: expected {what}") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _bool(text: str) -> bool:
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(text)


class Plugin:
    """Base class of a plugin (optional: any class with the same two methods works).

    ``__init__(config)`` builds an instance from the cohort's :class:`Config` (raise
    :class:`ConfigError` to refuse it); ``transform(message)`` handles one message. An
    instance may be discarded between calls: keep no state from one message to the next.
    """

    def __init__(self, config: Config):
        self.config = config

    def transform(self, message: Message) -> Union[dict, Record, list, _Skip]:
        raise NotImplementedError("a plugin implements transform(message)")


#: What ``transform`` may return, normalised: records, or ``None`` for :data:`SKIP`.
Records = Optional[list[Record]]


def records_of(result: Any) -> Records:
    """Normalise what ``transform`` returned into records (``None`` for :data:`SKIP`).

    Anything else is a bug in the plugin, reported as a ``TypeError`` naming what came back
    (``None`` usually means a missing ``return``).
    """
    if result is SKIP:
        return None
    if isinstance(result, (dict, Record)):
        result = [result]
    if not isinstance(result, list):
        raise TypeError(
            f"transform returned {type(result).__name__}; expected a dict, a Record, a list "
            "of them, or SKIP (a missing `return`?)"
        )
    records = []
    for item in result:
        if isinstance(item, dict):
            records.append(Record(item))
        elif isinstance(item, Record):
            if not isinstance(item.value, dict):
                raise TypeError(
                    f"a Record's value is {type(item.value).__name__}; expected a dict"
                )
            records.append(item)
        else:
            raise TypeError(
                f"transform returned a list holding {type(item).__name__}; expected dicts "
                "or Records"
            )
    return records


def value_json(value: dict) -> str:
    """A record value as the JSON text the contract carries: compact, strict (no NaN or
    infinity), keys in the order the plugin built them."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def round_half_away(x: float, digits: int = 0) -> float:
    """Round ``x`` to ``digits`` decimals as Rust's ``(x * 10^digits).round() / 10^digits``
    does (halves away from zero), not as Python's ``round`` (halves to even): so that a
    plugin ported from Rust gives the same number, and the same Avro bytes."""
    scale = 10.0**digits
    scaled = x * scale
    if not math.isfinite(scaled):
        return scaled / scale
    whole = math.floor(abs(scaled))
    if abs(scaled) - whole >= 0.5:
        whole += 1
    return math.copysign(whole, scaled) / scale
