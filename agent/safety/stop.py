"""The stop path: zero the travel driver's outputs at the highest bus priority and confirm by reading back.

On DRV-FW a stop is ENABLE = 0 and COMMAND_SPEED = 0 on both channels (never the old master's
0x0014, which is M2_DIRECTION there). The registers come from the bound profile, adjacent ones
are written in one frame, and the stop counts only once ENABLE, COMMAND_SPEED and ACTUAL_SPEED
of both channels read back as 0 and, as a second signal that does not come from the registers
just written, the motor current is below `current_max_a`. Until then the writes are repeated.

Every stop request first revokes all output permits (see drivers.modbus.interlock): an enable or
speed write that was issued before the stop and is still queued, held back or retried is dropped
by the bus task as it would go to the wire. So a confirmed stop cannot be undone by a write that
was already on its way.

Two kinds of stop. An urgent one (E-stop, fault trip, motion window expired, start-up) goes on
the bus at STOP priority and may abandon another slave's overdue read. A routine one (stop
command, pause, end of a command) goes at HALT priority: first in the queue, but it waits for a
phase-locked poll's slot, and it may be answered with a confirmation younger than `reuse_s` when
no energising frame has gone to the wire since that confirmation's final read-back was sent. A
request joins a stop in progress only under the same rule. So neither a flood of stop commands
nor their writes can starve the safety module's polls, an urgent stop never waits behind a
routine one, and a `fresh` stop (reset, shutdown) is always written and read back anew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from agent.safety.policy import SafetyPolicy
from drivers.modbus.errors import BusError
from drivers.modbus.frames import read_request, write_request
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_register_reads
from drivers.modbus.schedule import Priority
from drivers.profiles import Profile
from drivers.profiles.codec import decode
from drivers.profiles.model import Register

log = logging.getLogger("oht.stop")

STOP_WRITE_REGISTERS = ("M1_ENABLE", "M1_COMMAND_SPEED", "M2_ENABLE", "M2_COMMAND_SPEED")
ACTUAL_SPEED_REGISTERS = ("M1_ACTUAL_SPEED", "M2_ACTUAL_SPEED")
STOP_CHECK_REGISTERS = STOP_WRITE_REGISTERS + ACTUAL_SPEED_REGISTERS
CURRENT_REGISTER = "CURRENT"  # the driver's motor current: the stop's second signal, where the profile has it
# Travel registers whose nonzero value can make the carriage move: written only under a permit.
ENERGISING_REGISTERS = frozenset(
    {"M1_ENABLE", "M1_COMMAND_SPEED", "M1_DIRECTION", "M2_ENABLE", "M2_COMMAND_SPEED", "M2_DIRECTION", "HEARTBEAT"}
)


@dataclass(frozen=True)
class StopOutcome:
    confirmed: bool
    reason: str
    requested_at: float  # time.monotonic()
    first_write_at: float | None  # when the first stop frame was acknowledged by the driver
    confirmed_at: float | None
    attempts: int
    error: str | None = None  # stable code of the last failure
    readback_sent_at: float | None = None  # when the final read-back was queued (it reached the wire later)
    current_a: float | None = None  # the motor current read with the final read-back

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
        current_max_a: float = 0.2,
    ) -> None:
        self.master = master
        self.interlock = master.interlock
        self.confirm_timeout_s = confirm_timeout_s
        self.readback_interval_s = readback_interval_s
        self.decel_allowance_s = decel_allowance_s
        self.current_max_a = current_max_a
        self._address: int | None = None
        self._writes: list[tuple[int, list[int]]] = []
        self._reads: list[tuple[int, int]] = []
        self._check: dict[str, int] = {}
        self._current_reg: Register | None = None
        self._current: asyncio.Task[StopOutcome] | None = None
        self._current_urgent = False
        self._current_requested_at = 0.0
        self.last: StopOutcome | None = None
        self.last_confirmed: StopOutcome | None = None
        self.history: list[StopOutcome] = []
        self.reuse_s = 0.1

    @classmethod
    def from_policy(cls, master: BusMaster, policy: SafetyPolicy) -> StopPath:
        return cls(
            master, confirm_timeout_s=policy.stop_confirm_timeout_ms / 1000, current_max_a=policy.stop_current_max_a
        )

    @property
    def bound(self) -> bool:
        return self._address is not None

    @property
    def in_progress(self) -> bool:
        return self._current is not None and not self._current.done()

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
        if CURRENT_REGISTER in profile:
            current = profile.register(CURRENT_REGISTER)
            checks.append(current)
            self._current_reg = current
        self._reads = plan_register_reads(
            checks,
            max_registers=profile.max_read_registers,
            max_gap=profile.max_read_registers,
            readable=profile.is_readable,
        )
        self._check = {r.name: r.address for r in checks}
        self._writes = writes
        self._address = address

    def request(self, reason: str, *, routine: bool = False, fresh: bool = False) -> asyncio.Task[StopOutcome]:
        """Start a stop (or join the one in progress). Never raises; the outcome says what happened.

        Every request revokes the output permits issued before it, at once. A `routine` stop joins
        whatever stop is running, or is answered with the last confirmation if it is younger than
        `reuse_s`; an urgent stop joins only an urgent one (behind a routine stop it starts its own
        run at STOP priority: writing the zeros twice is harmless). Either joins or reuses only if
        no energising frame has gone to the wire since the stop it would rely on; with the permits
        revoked, none can go out later. A `fresh` stop never joins and never reuses.
        """
        self.interlock.revoke_all()
        current = self._current
        if (
            not fresh
            and current is not None
            and not current.done()
            and (routine or self._current_urgent)
            and not self.interlock.energised_since(self._current_requested_at)
        ):
            return current
        last = self.last
        if (
            routine
            and not fresh
            and current is not None
            and last is not None
            and last.confirmed
            and last.confirmed_at is not None
            and last.readback_sent_at is not None
            and time.monotonic() - last.confirmed_at < self.reuse_s
            and not self.interlock.energised_since(last.readback_sent_at)
        ):
            return current
        priority = Priority.HALT if routine else Priority.STOP
        self._current_requested_at = time.monotonic()
        first = self._queue_first_write(priority)
        self._current = asyncio.get_running_loop().create_task(
            self._run(reason, priority, self._current_requested_at, first), name="stop-path"
        )
        self._current_urgent = not routine
        return self._current

    def _queue_first_write(self, priority: Priority) -> asyncio.Future[tuple[int, ...]] | None:
        """The stop's first frame, queued now rather than when its task first runs.

        A trip raised from a bus callback (a reply that shows the E-stop pressed, a link that went
        silent) runs inside the bus task: queued here, the frame is the bus's very next job, and
        does not wait behind the transaction the bus would otherwise start in the meantime.
        """
        if self._address is None or not self._writes:
            return None
        start, values = self._writes[0]
        try:
            fut = self.master.submit(write_request(self._address, start, values), priority, retries=1)
        except BusError:
            return None  # the run tries again itself and reports what fails
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # read here if the run never does
        return fut

    async def stop(self, reason: str, *, routine: bool = False, fresh: bool = False) -> StopOutcome:
        return await asyncio.shield(self.request(reason, routine=routine, fresh=fresh))

    async def _run(
        self, reason: str, priority: Priority, requested: float, first: asyncio.Future[tuple[int, ...]] | None = None
    ) -> StopOutcome:
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
                for index, (start, values) in enumerate(self._writes):
                    if index == 0 and first is not None:
                        queued, first = first, None
                        await queued  # queued by request(): the first attempt's first frame
                    else:
                        await self.master.execute(write_request(address, start, values), priority, retries=1)
                    if first_write is None:
                        first_write = time.monotonic()
                check = await self._read_back_zero(address, priority)
                if check.stopped:
                    outcome = StopOutcome(
                        True,
                        reason,
                        requested,
                        first_write,
                        time.monotonic(),
                        attempts,
                        readback_sent_at=check.sent_at,
                        current_a=check.current_a,
                    )
                    self._remember(outcome)
                    return outcome
                error = check.error or error
            except BusError as exc:
                error = exc.code
            if time.monotonic() - requested > self.confirm_timeout_s and (
                self.last is None or self.last.requested_at != requested
            ):
                # Tell the supervisor (through `last`) that confirmation is late; keep trying meanwhile.
                self._remember(
                    StopOutcome(False, reason, requested, first_write, None, attempts, error or "STOP_NOT_CONFIRMED")
                )
                log.error(
                    "stop not confirmed after %.0f ms (%s); still trying", 1000 * (time.monotonic() - requested), error
                )
            await asyncio.sleep(0.01 if attempts < 10 else 0.1)

    async def _read_back_zero(self, address: int, priority: Priority) -> _Readback:
        """Read until every checked register is 0 and the current is low; `stopped` False means write again.

        Written again when an output reads back on (something re-enabled it), or when the speed
        or the current does not come down within the deceleration allowance.
        """
        deadline = time.monotonic() + self.decel_allowance_s
        while True:
            sent_at = time.monotonic()
            values: dict[int, int] = {}
            for start, count in self._reads:
                regs = await self.master.execute(read_request(address, start, count), priority, retries=1)
                values.update({start + i: v for i, v in enumerate(regs)})
            commanded = [values[self._check[n]] for n in STOP_WRITE_REGISTERS]
            actual = [values[self._check[n]] for n in ACTUAL_SPEED_REGISTERS]
            current_a = None
            reg = self._current_reg
            if reg is not None:
                current_a = abs(float(decode(reg, [values[reg.address + i] for i in range(reg.width)])))
            current_low = current_a is None or current_a <= self.current_max_a
            if not any(commanded) and not any(actual) and current_low:
                return _Readback(True, sent_at, current_a)
            if any(commanded):
                return _Readback(False, sent_at, current_a, "STOP_OUTPUT_REENABLED")
            if time.monotonic() > deadline:
                # Speed registers say stopped but the motor still draws current (or still reports speed):
                # a frozen feedback register must not confirm a stop that did not happen.
                return _Readback(
                    False, sent_at, current_a, "STOP_CURRENT_PERSISTS" if not any(actual) else "STOP_DECEL_TOO_LONG"
                )
            await asyncio.sleep(self.readback_interval_s)

    def _remember(self, outcome: StopOutcome) -> None:
        self.last = outcome
        if outcome.confirmed:
            self.last_confirmed = outcome
        self.history.append(outcome)
        if len(self.history) > 256:
            del self.history[:128]


@dataclass(frozen=True)
class _Readback:
    stopped: bool
    sent_at: float
    current_a: float | None
    error: str | None = None
