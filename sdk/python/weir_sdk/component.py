"""The glue between a plugin class and weir's ``weir:transform`` world.

Used only inside the Wasm build: ``cargo xtask plugins`` generates the module that calls
:func:`export` with the name and version from ``pyproject.toml`` and the schema file's text,
and ``componentize-py`` turns it into a component. ``wit_world`` is the binding
``componentize-py`` generates from ``wit/transform.wit`` at build time.
"""

from __future__ import annotations

import os
import random
import time
import traceback
from typing import Any, Callable

import weir_sdk
from componentize_py_types import Err
from wit_world.imports import host, types


def _to_host_log(level: weir_sdk.Level, message: str) -> None:
    host.log(types.Level(int(level)), message)


def describe_exception(e: BaseException) -> str:
    """``TypeError: ... (at thermostat.py:42 in transform)``: what went wrong and where, in
    the plugin's code rather than the SDK's."""
    # Without the source lines: reading them is file access, which a plugin is not given.
    frames = traceback.StackSummary.extract(
        traceback.walk_tb(e.__traceback__), lookup_lines=False
    )
    sdk = os.path.dirname(__file__)
    ours = [f for f in frames if os.path.dirname(f.filename) != sdk] or list(frames)
    where = ""
    if ours:
        last = ours[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return f"{type(e).__name__}: {e}{where}"


def _outcome(plugin: Any, message: weir_sdk.Message) -> Any:
    """One message's outcome in the contract's types. A :class:`weir_sdk.Rejection` is a
    rejection; any other exception is logged and raised, which traps the call: weir then
    isolates the message that caused it and quarantines it as ``plugin.trap``."""
    try:
        records = weir_sdk.records_of(plugin.transform(message))
    except weir_sdk.Rejection as r:
        return types.Outcome_Reject(types.Rejection(code=r.code, reason=r.reason))
    except BaseException as e:
        weir_sdk.log(weir_sdk.Level.ERROR, f"plugin raised {describe_exception(e)}")
        raise
    if records is None:
        return types.Outcome_Skip()
    out = []
    for r in records:
        try:
            value = weir_sdk.value_json(r.value)
        except (TypeError, ValueError) as e:
            return types.Outcome_Reject(
                types.Rejection(
                    code="record.serialize",
                    reason=f"record could not be serialised to JSON: {e}",
                )
            )
        out.append(types.Record(key=r.key, value=value, headers=list(r.headers)))
    return types.Outcome_Emit(out)


class NotGranted(RuntimeError):
    """A plugin asked for something weir does not grant it (a clock, randomness)."""


def _denied(what: str, instead: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise NotGranted(f"a weir plugin is given no {what}; {instead}")

    return refuse


def _given(real: Callable[..., Any], needs: int, refuse: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` when called with at least ``needs`` arguments (an explicit time to format),
    ``refuse`` when it would read the clock."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) + len(kwargs) >= needs:
            return real(*args, **kwargs)
        return refuse()

    return call


def deny_nondeterminism() -> None:
    """Make the clock and randomness fail with a reason instead of working or trapping
    without one: the interpreter's own stubs would trap silently (the clock) or, worse,
    work (``random`` is seeded when the component is built, and its state then advances
    call by call, so a replay would not give the same bytes). A generator the plugin seeds
    itself, ``random.Random(42)``, stays available: it is deterministic; so does formatting
    a time the plugin gives (``time.strftime(fmt, t)``, ``datetime``'s ``strftime``).

    Runs when this module is imported, before the plugin's module is: a plugin that binds
    ``from random import random`` at its top level binds the refusal."""
    clock = _denied("clock", "use message.received_at_ms, fixed when weir received it")
    for name in (
        "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
        "process_time", "process_time_ns", "thread_time", "thread_time_ns", "sleep",
    ):
        if hasattr(time, name):
            setattr(time, name, clock)
    # Given a time, these only format it; without one they read the clock.
    for name, needs in (("localtime", 1), ("gmtime", 1), ("ctime", 1), ("asctime", 1), ("strftime", 2)):
        if hasattr(time, name):
            setattr(time, name, _given(getattr(time, name), needs, clock))
    chance = _denied("randomness", "seed a generator of your own: random.Random(seed)")
    for name in random.__all__:
        if getattr(getattr(random, name), "__self__", None) is random._inst:
            setattr(random, name, chance)
    os.urandom = chance


def export(plugin_class: type, *, name: str, version: str, schema: str) -> type:
    """The ``WitWorld`` class ``componentize-py`` exports: ``describe``, ``init`` and
    ``process`` over ``plugin_class``."""
    weir_sdk._log_sink = _to_host_log
    instance: dict[str, Any] = {}

    def build(config: list[tuple[str, str]]) -> Any:
        try:
            return plugin_class(weir_sdk.Config(config))
        except weir_sdk.ConfigError as e:
            raise Err(str(e)) from None
        except Exception as e:
            raise Err(f"the plugin's __init__ raised {describe_exception(e)}") from None

    class WitWorld:
        def describe(self) -> types.PluginInfo:
            return types.PluginInfo(name=name, version=version, schema=schema)

        def init(self, config: list[tuple[str, str]]) -> None:
            instance["plugin"] = build(config)

        def process(self, batch: list[types.Message]) -> list[Any]:
            plugin = instance.get("plugin")
            if plugin is None:
                try:
                    plugin = instance["plugin"] = build([])
                except Err as e:
                    refused = types.Outcome_Reject(
                        types.Rejection(
                            code="plugin.config",
                            reason="plugin was not initialised and the empty config is "
                            f"refused: {e.value}",
                        )
                    )
                    return [refused for _ in batch]
            return [
                _outcome(
                    plugin,
                    weir_sdk.Message(
                        m.topic, m.payload, m.properties, m.content_type, m.received_at_ms
                    ),
                )
                for m in batch
            ]

    return WitWorld


deny_nondeterminism()
