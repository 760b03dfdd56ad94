"""One simulated slave: its registers, firmware, faults, statistics and request queue.

``execute`` holds the Modbus semantics of the real firmware (which exception for what); the
event loop in ``server.py`` decides *when* a request is executed (service period, busy slave)
and what happens to the reply on its way out (faults, wire time).

Exception choices, in the order a request is checked (the Modbus application protocol order):
- 01: a function code not in the profile's ``function_codes`` (or not 03/04/06/16 at all);
- 03: read count 0 or > 125; write-multiple count 0 or > 123, or byte count != 2 x count;
- 02: any register of the range not in the profile (unmapped gaps included, so a master must
  not bridge them), or a write touching a read-only (R) register. SAFE-FW and DRV-FW answer 02
  for "address not allowed"; treating "not writable" the same way keeps one rule for the master.
A write-multiple is all-or-nothing. Values are stored raw (no range check), like the firmware.
W registers read back their stored value, so the identity block 0x0100-0x0109 reads in one go.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from drivers.sim import rtu
from drivers.sim.faults import Faults
from drivers.sim.firmware import Firmware, Peers, make_firmware
from drivers.sim.registers import Profile, RegisterBank


@dataclass(slots=True)
class Stats:
    frames_received: int = 0
    replies_sent: int = 0
    crc_errors: int = 0
    exceptions_sent: int = 0
    faults_injected: int = 0
    replies_delayed: int = 0
    #: Frames received while silenced (not executing) or rebooting.
    frames_ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Outcome(NamedTuple):
    reply: bytes
    #: True when the request changed (or read) the slave's state as asked.
    applied: bool
    exception: int | None


class Queued(NamedTuple):
    received: float
    request: rtu.Request
    length: int


class SimSlave:
    def __init__(
        self,
        unit: int,
        profile: Profile,
        peers: Peers,
        rng: random.Random,
        service_period_ms: float,
        phase: float,
    ) -> None:
        self.unit = unit
        self.profile = profile
        self.bank = RegisterBank(profile)
        self.firmware: Firmware = make_firmware(self.bank, unit, peers)
        self.faults = Faults(rng=rng)
        self.stats = Stats()
        self.service_period = service_period_ms / 1000.0
        #: Absolute monotonic time of one service tick: ticks fall at phase + k * period.
        self.phase = phase
        self.queue: deque[Queued] = deque()
        #: A reply is on its way out (delay, wire time): later frames wait behind it.
        self.busy = False
        #: The timer that will send the pending reply (cancelled by a reboot).
        self.pending: Any = None
        self.tick_scheduled = False
        self.last_tick = float("-inf")

    def booting(self, now: float) -> bool:
        return now < self.faults.boot_until

    def next_tick(self, now: float) -> float:
        """First service tick at or after ``now`` that has not served a frame yet."""
        period = self.service_period
        k = -(-(now - self.phase) // period)  # ceil
        t = self.phase + k * period
        while t <= self.last_tick + 1e-9:
            t += period
        return t

    def execute(self, req: rtu.Request, now: float) -> Outcome:
        """Run one request against the registers and firmware; returns the reply frame."""
        unit, fc = req.unit, req.function
        bank = self.bank

        def fail(code: int) -> Outcome:
            return Outcome(rtu.exception_reply(unit, fc, code), False, code)

        if fc not in self.profile.function_codes or fc not in rtu.KNOWN_FUNCTIONS:
            return fail(rtu.EXC_ILLEGAL_FUNCTION)
        if fc in rtu.READ_FUNCTIONS:
            if not 1 <= req.count <= rtu.MAX_READ_COUNT:
                return fail(rtu.EXC_ILLEGAL_VALUE)
            if not bank.mapped(req.address, req.count):
                return fail(rtu.EXC_ILLEGAL_ADDRESS)
            values = bank.read(req.address, req.count)
            frozen = self.faults.frozen
            if frozen:
                values = [frozen.get(req.address + i, v) for i, v in enumerate(values)]
            return Outcome(rtu.read_reply(unit, fc, values), True, None)
        if fc == rtu.FC_WRITE_MULTIPLE and (req.malformed or not 1 <= req.count <= rtu.MAX_WRITE_COUNT):
            return fail(rtu.EXC_ILLEGAL_VALUE)
        if not bank.mapped(req.address, req.count) or not bank.writable(req.address, req.count):
            return fail(rtu.EXC_ILLEGAL_ADDRESS)
        for offset, value in enumerate(req.values):
            bank.store(req.address + offset, value)
        for offset in range(req.count):
            self.firmware.on_write(req.address + offset, now)
        if fc == rtu.FC_WRITE_SINGLE:
            return Outcome(rtu.write_single_reply(unit, req.address, req.values[0]), True, None)
        return Outcome(rtu.write_multiple_reply(unit, req.address, req.count), True, None)

    def reboot(self, now: float, boot_ms: float) -> None:
        """Registers back to defaults; deaf until ``boot_ms`` have passed."""
        self.queue.clear()
        if self.pending is not None:  # the reply being computed dies with the MCU
            self.pending.cancelled = True
            self.pending = None
            self.busy = False
        self.faults.boot_until = now + boot_ms / 1000.0
        self.firmware.power_on(now)
