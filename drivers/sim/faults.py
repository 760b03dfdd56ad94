"""Fault injection state of one simulated slave.

Faults are what a real bus does to a master: a dead slave, late replies (past the master's
timeout, so the reply lands on the NEXT request), corrupted CRCs, exceptions, replies under the
wrong slave id, reboots. Each probabilistic fault draws from one seeded RNG so a run with
``--seed`` is repeatable for the same sequence of frames.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Faults:
    #: Receives frames but never answers.
    silent: bool = False
    #: While silent, still execute the frames (a broken TX line) instead of ignoring them.
    silent_execute: bool = False
    delay_ms: float = 0.0
    delay_rate: float = 0.0
    corrupt_rate: float = 0.0
    exception_code: int = 0
    exception_rate: float = 0.0
    reply_as: int = 0
    wrong_address_rate: float = 0.0
    #: Rebooting until this monotonic time: frames are ignored, nothing is executed.
    boot_until: float = 0.0
    #: Register address -> value every read reports there (a frozen feedback register).
    frozen: dict[int, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def clear(self) -> None:
        """Every injected fault off (a reboot in progress is finished early)."""
        self.silent = False
        self.silent_execute = False
        self.delay_ms = self.delay_rate = 0.0
        self.corrupt_rate = 0.0
        self.exception_code = 0
        self.exception_rate = 0.0
        self.reply_as = 0
        self.wrong_address_rate = 0.0
        self.boot_until = 0.0
        self.frozen.clear()

    def roll(self, rate: float) -> bool:
        """True with probability ``rate`` (no RNG draw for 0 and 1, keeping seeds stable)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.rng.random() < rate

    def as_dict(self) -> dict[str, object]:
        return {
            "silent": self.silent,
            "silent_execute": self.silent_execute,
            "delay_ms": self.delay_ms,
            "delay_rate": self.delay_rate,
            "corrupt_rate": self.corrupt_rate,
            "exception_code": self.exception_code,
            "exception_rate": self.exception_rate,
            "reply_as": self.reply_as,
            "wrong_address_rate": self.wrong_address_rate,
            "frozen": {str(a): v for a, v in self.frozen.items()},
        }
