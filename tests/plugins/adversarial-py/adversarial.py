"""A Python plugin that misbehaves on request, to prove weir contains it. The payload picks
the behaviour:

| payload     | behaviour                                                  |
|-------------|------------------------------------------------------------|
| `loop`      | spins forever (CPU deadline)                               |
| `bomb`      | allocates until memory runs out (memory cap)               |
| `raise`     | raises an exception (a bug: the call traps)                |
| `recurse`   | unbounded recursion                                        |
| `clock`     | reads the wall clock, which a plugin is not given          |
| `random`    | draws from `random`, which a plugin is not given either    |
| `seeded`    | draws from a generator it seeds itself (deterministic)     |
| `early`     | calls `random.random` as imported when the module loaded   |
| `date`      | formats a time it gives (`datetime(2026, 1, 2)`): allowed  |
| `hash`      | emits the iteration order of a set of strings (fixed when  |
|             | the component is built, so the same in every instance)     |
| `badschema` | emits `{"text": 5}`, which violates the schema             |
| `reject`    | rejects with `test.rejected`                               |
| `log`       | logs a warning, then emits                                 |
| other       | emits `{"text": <payload>}`                                |

Config `init = "raise"` makes the constructor raise; `init = "refuse"` refuses the config.
"""

import random
import time
from datetime import datetime
from random import random as early

from weir_sdk import ConfigError, Level, Plugin, Rejection, log


def _recurse(n):
    return _recurse(n + 1) + 1


class Adversarial(Plugin):
    def __init__(self, config):
        how = config.get("init")
        if how == "raise":
            raise RuntimeError("adversarial constructor fails on request")
        if how == "refuse":
            raise ConfigError("config key `init` = refuse: refused on request")

    def transform(self, message):
        text = message.text()
        if text == "loop":
            n = 0
            while True:
                n += 1
        if text == "bomb":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if text == "raise":
            raise ValueError("adversarial exception on request")
        if text == "recurse":
            return {"text": str(_recurse(0))}
        if text == "clock":
            return {"text": str(time.time())}
        if text == "random":
            return {"text": repr(random.random())}
        if text == "early":
            return {"text": repr(early())}
        if text == "date":
            return {"text": datetime(2026, 1, 2).strftime("%Y-%m-%d")}
        if text == "seeded":
            return {"text": repr(random.Random(7).random())}
        if text == "hash":
            return {"text": ",".join({f"k{i}" for i in range(20)})}
        if text == "badschema":
            return {"text": 5}
        if text == "log":
            log(Level.WARN, "a line from the adversarial plugin")
            return {"text": text}
        if text == "reject":
            raise Rejection("test.rejected", "rejected on request")
        return {"text": text}
