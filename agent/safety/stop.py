"""The stop path: zero the travel driver's outputs at the highest bus priority and confirm by reading back.

On DRV-FW a stop is ENABLE = 0 and COMMAND_SPEED = 0 on both channels (never the old master's
0x0014, which is M2_DIRECTION there). The registers come from the bound profile, adjacent ones
are written in one frame, and the stop counts only once ENABLE, COMMAND_SPEED and ACTUAL_SPEED
of both channels read back as 0. Until then the writes are repeated. Concurrent requests share
the stop in progress.

Two kinds of stop. An urgent one (E-stop, fault trip, motion window expired, start-up,
shutdown) goes on the bus at STOP priority and may abandon another slave's overdue read. A
routine one (stop command, pause, end of a command) goes at HALT priority: first in the queue,
but it waits for a phase-locked poll's slot, and it is answered with a confirmation younger
than `reuse_s` when nothing has written the outputs since. So neither a flood of stop commands
nor their writes can starve the safety module's polls, and an urgent stop never waits behind a
routine one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from drivers.modbus.errors import BusError
from drivers.modbus.frames import read_request, write_request
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_register_reads
from drivers.modbus.schedule import Priority
from drivers.profiles import Profile

log = logging.getLogger("oht.stop")

STOP_WRITE_REGISTERS = ("M1_ENABLE", "M1_COMMAND_SPEED", "M2_ENABLE", "M2_COMMAND_SPEED")
STOP_CHECK_REGISTERS = STOP_WRITE_REGISTERS + ("M1_ACTUAL_SPEED", "M2_ACTUAL_SPEED")


@dataclass(frozen=True)
class StopOutcome:
    confirmed: bool
    reason: str
    requested_at: float  # time.monotonic()
    first_write_at: float | None  # when the first stop frame was acknowledged by the driver
    confirmed_at: float | None
    attempts: int
    error: str | None = None  # stable code of the last failure

    @property
    def confirm_ms(self) -> float | None:
        if self.confirmed_at is None:
            return None
        return (self.confirmed_at - self.requested_at) * 1000.0


class StopPath:
    """Owns the stop sequence for one travel driver."""

    def __init__(
        self,
        master: BusMaster,
        *,
        confirm_timeout_s: float = 1.0,
        readback_interval_s: float = 0.005,
        decel_allowance_s: float = 2.0,
    ) -> None:
        self.master = master
        self.confirm_timeout_s = confirm_timeout_s
        self.readback_interval_s = readback_interval_s
        self.decel_allowance_s = decel_allowance_s
        self._address: int | None = None
        self._writes: list[tuple[int, list[int]]] = []
        self._reads: list[tuple[int, int]] = []
        self._check: dict[str, int] = {}
        self._current: asyncio.Task[StopOutcome] | None = None
        self._current_urgent = False
        self.last: StopOutcome | None = None
        self.history: list[StopOutcome] = []
        self.reuse_s = 0.1
        self._outputs_written_at: float | None = None

    @property
    def bound(self) -> bool:
        return self._address is not None

    def bind(self, address: int, profile: Profile) -> None:
        """Prepare the frames for this driver from its profile (done once, not on the hot path)."""
        regs = [profile.register(n) for n in STOP_WRITE_REGISTERS]
        regs.sort(key=lambda r: r.address)
        writes: list[tuple[int, list[int]]] = []
        for reg in regs:
            if writes and writes[-1][0] + len(writes[-1][1]) == reg.address:
                writes[-1][1].append(0)
            else:
                writes.append((reg.address, [0]))
        checks = [profile.register(n) for n in STOP_CHECK_REGISTERS]
        self._reads = plan_register_reads(checks, max_registers=profile.max_read_registers, max_gap=profile.max_read_registers,
                                          readable=profile.is_readable)
        self._check = {r.name: r.address for r in checks}
        self._writes = writes
        self._address = address

    def note_output_write(self) -> None:
        """Called for every write that may turn the driver's outputs on: a later stop must go to the bus."""
        self._outputs_written_at = time.monotonic()

    def request(self, reason: str, *, routine: bool = False) -> asyncio.Task[StopOutcome]:
        """Start a stop (or join the one in progress). Never raises; the outcome says what happened.

        A `routine` stop joins whatever stop is running, or is answered with the last confirmation
        if it is younger than `reuse_s` and no output was written since. An urgent stop joins only
        an urgent one: behind a routine stop it starts its own run at STOP priority (writing the
        zeros twice is harmless).
        """
        current = self._current
        if current is not None and not current.done() and (routine or self._current_urgent):
            return current
        last = self.last
        if (routine and current is not None and last is not None and last.confirmed and last.confirmed_at is not None
                and time.monotonic() - last.confirmed_at < self.reuse_s
                and (self._outputs_written_at is None or self._outputs_written_at < last.requested_at)):
            return current
        priority = Priority.HALT if routine else Priority.STOP
        self._current = asyncio.get_running_loop().create_task(self._run(reason, priority), name="stop-path")
        self._current_urgent = not routine
        return self._current

    async def stop(self, reason: str, *, routine: bool = False) -> StopOutcome:
        return await asyncio.shield(self.request(reason, routine=routine))

    async def _run(self, reason: str, priority: Priority) -> StopOutcome:
        requested = time.monotonic()
        first_write: float | None = None
        attempts = 0
        error: str | None = None
        if self._address is None:
            outcome = StopOutcome(False, reason, requested, None, None, 0, "TRAVEL_NOT_BOUND")
            self._remember(outcome)
            return outcome
        address = self._address
        while True:
            attempts += 1
            try:
                for start, values in self._writes:
                    await self.master.execute(write_request(address, start, values), priority, retries=1)
                    if first_write is None:
                        first_write = time.monotonic()
                if await self._read_back_zero(address, requested, priority):
                    outcome = StopOutcome(True, reason, requested, first_write, time.monotonic(), attempts)
                    self._remember(outcome)
                    return outcome
            except BusError as exc:
                error = exc.code
            if time.monotonic() - requested > self.confirm_timeout_s and (self.last is None or self.last.requested_at != requested):
                # Tell the supervisor (through `last`) that confirmation is late; keep trying meanwhile.
                self._remember(StopOutcome(False, reason, requested, first_write, None, attempts, error or "STOP_NOT_CONFIRMED"))
                log.error("stop not confirmed after %.0f ms (%s); still trying", 1000 * (time.monotonic() - requested), error)
            await asyncio.sleep(0.01 if attempts < 10 else 0.1)

    async def _read_back_zero(self, address: int, requested: float, priority: Priority) -> bool:
        """True once every checked register reads 0; False to rewrite (outputs re-enabled or decel too long)."""
        deadline = time.monotonic() + self.decel_allowance_s
        while True:
            values: dict[int, int] = {}
            for start, count in self._reads:
                regs = await self.master.execute(read_request(address, start, count), priority, retries=1)
                values.update({start + i: v for i, v in enumerate(regs)})
            commanded = [values[self._check[n]] for n in STOP_WRITE_REGISTERS]
            actual = [values[self._check[n]] for n in ("M1_ACTUAL_SPEED", "M2_ACTUAL_SPEED")]
            if not any(commanded) and not any(actual):
                return True
            if any(commanded) or time.monotonic() > deadline:
                return False  # something re-enabled the output: write again
            await asyncio.sleep(self.readback_interval_s)

    def _remember(self, outcome: StopOutcome) -> None:
        self.last = outcome
        self.history.append(outcome)
        if len(self.history) > 256:
            del self.history[:128]
