"""The safety module's configuration is agent-owned: applied at bind, read back, watched for reboots.

SAFE-FW keeps its configuration (sensor enables, zone thresholds, input levels, latch mode) in RAM
and comes back from a brown-out or MCU reset with its power-on defaults, in which every sensor is
off: an unconfigured module never trips. A reboot shorter than the link budget leaves no other
trace. So the agent holds the expected values (`[safety_module]`), and this guard

- at bind reads them, writes whatever differs (commissioning) and reads it back: until every
  value has read back right the configuration is unverified, the safety role is not ready and
  motion is not allowed;
- then reads them back continuously, from the poll's snapshots: the sensor enables come with the
  module's status read on every tick (a reboot clears them, so it shows at once), the rest of the
  configuration rides on that read every verify interval (the poller widens it; see
  drivers.polling). Registers the poller does not read at all are read on phase-locked
  background polls of the guard's own, each on a service tick of its own;
- on any difference raises SAFETY_CONFIG_MISMATCH (latched protective stop) for as long as it
  lasts; when every value that tells a configured module from a fresh one reads its power-on
  default again, the module has rebooted: SAFETY_MODULE_REBOOTED is latched as well and, if
  `reapply_after_reboot`, the configuration is written again at once. The latches stay until a
  technician's reset, which is refused while the mismatch lasts.

A difference that is not a reboot (someone wrote a register) is never overwritten automatically:
the agent cannot know which side is right, so a person decides.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.modbus.errors import BusError, BusTimeout
from drivers.modbus.frames import read_request, write_request
from drivers.modbus.merge import plan_register_reads
from drivers.modbus.schedule import PollPlan, PollSchedule, Priority
from drivers.polling import Binding
from drivers.profiles import plan_write
from drivers.snapshots import ModuleSnapshot
from oht_errors import CodedError

log = logging.getLogger("oht.safety.config")

MISMATCH = "SAFETY_CONFIG_MISMATCH"
REBOOTED = "SAFETY_MODULE_REBOOTED"


class ConfigState(enum.StrEnum):
    UNVERIFIED = "unverified"  # not yet read back since bind or since the last write
    VERIFIED = "verified"
    MISMATCH = "mismatch"


class FaultSink(Protocol):
    """What the guard needs from the supervisor (its existing external-fault API)."""

    def raise_external(self, code: str, detail: str) -> object: ...
    def clear_external(self, code: str) -> object: ...
    def external_active(self, code: str) -> bool: ...
    def record_event(self, code: str, detail: str) -> object: ...


Writer = Callable[[dict[str, int]], Awaitable[None]]

WRITE_TIMEOUT_S = 5.0
COMMISSIONING_INTERVAL_S = 0.5


class LockedWriter:
    """Writes to a slave that serves one frame per service tick, on a tick of their own.

    A write queued as an ordinary job is sent at once and waits at the module for its tick; it
    takes the tick of a status poll, and next to a background read's tick that leaves the status
    unread for three ticks, longer than the safety link budget. So each frame goes out as a
    one-shot phase-locked background plan: the schedule gives it a free tick that is not next to
    another background read's, and it is removed after its one run. Names and ranges are checked
    through the bound profile, as for every other write.
    """

    def __init__(
        self, schedule: PollSchedule, binding: Binding, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.schedule = schedule
        self.binding = binding
        self._clock = clock
        self._seq = 0

    async def __call__(self, values: dict[str, int]) -> None:
        profile = self.binding.profile
        planned = sorted(plan_write(profile, n, v) for n, v in values.items())
        address, words = planned[0][0], [w for _, ws in planned for w in ws]
        if any(a + len(ws) != b for (a, ws), (b, _) in itertools.pairwise(planned)):
            raise ValueError("a frame must hold adjacent registers only")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._seq += 1
        key = f"{self.binding.role}:config-write:{address:04x}:{self._seq}"

        def ok(_words: tuple[int, ...], _at: float) -> None:
            self.schedule.remove(key)
            if not done.done():
                done.set_result(None)

        def failed(exc: Exception, _at: float) -> None:
            self.schedule.remove(key)
            if not done.done():
                done.set_exception(exc)

        service = profile.service_period_ms / 1000.0
        plan = PollPlan(
            key=key,
            request=write_request(self.binding.address, address, words),
            interval_s=max(3 * service, 0.05),
            priority=Priority.SAFETY,
            service_period_s=service,
            background=True,
            on_result=ok,
            on_error=failed,
        )
        self.schedule.add(plan, self._clock())
        try:
            await asyncio.wait_for(done, WRITE_TIMEOUT_S)
        except TimeoutError:
            raise BusTimeout(f"configuration write at 0x{address:04X} not done within {WRITE_TIMEOUT_S:g} s") from None
        finally:
            self.schedule.remove(key)


@dataclass(frozen=True)
class Block:
    start: int
    count: int
    names: tuple[str, ...]


class ModuleConfigGuard:
    def __init__(
        self,
        binding: Binding,
        expected: dict[str, int],
        *,
        schedule: PollSchedule,
        faults: FaultSink,
        write: Writer,
        interval_s: float,
        reapply_after_reboot: bool,
        phase_s: float = 0.0,
        request_read: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.binding = binding
        self.expected = dict(expected)
        self.schedule = schedule
        self.faults = faults
        self._write = write
        self.interval_s = interval_s
        self.reapply_after_reboot = reapply_after_reboot
        self.phase_s = phase_s
        self._request_read = request_read  # asks the poller for the config group as soon as it can
        self._clock = clock
        profile = binding.profile
        self.missing = sorted(
            n
            for n in expected
            if n not in profile or not profile.register(n).readable or not profile.register(n).writable
        )
        known = [profile.register(n) for n in expected if n not in self.missing]
        self.defaults = {r.name: r.default for r in known}
        # Registers that tell a configured module from one just powered up.
        self.telltales = frozenset(r.name for r in known if r.default != expected[r.name])
        self.blocks: list[Block] = []
        # Registers the poller reads (every tick, or every interval) come with its snapshots: no
        # read of ours. Each group is judged once all of its registers were read again.
        self.polled_blocks: list[Block] = []
        for marker, group in ((-1, "fast"), (-2, "config")):
            names = tuple(r.name for r in known if r.poll == group)
            if names:
                self.polled_blocks.append(Block(marker, 0, names))
        self.blocks.extend(self.polled_blocks)
        own = [r for r in known if r.poll not in ("fast", "config")]
        for start, count in plan_register_reads(
            own,
            max_registers=profile.max_read_registers,
            max_gap=profile.max_read_registers,
            readable=profile.is_readable,
        ):
            names = tuple(r.name for r in own if start <= r.address < start + count)
            self.blocks.append(Block(start, count, names))
        self._snapshot_at: dict[int, float] = {}  # polled block -> when its registers were last judged
        self.state = ConfigState.UNVERIFIED
        self.diffs: dict[str, tuple[int | float | None, int]] = {}
        self._block_diffs: dict[int, dict[str, tuple[int | float | None, int]]] = {}
        self._block_read_at: dict[int, float] = {}
        self._written_at = float("-inf")  # reads that left before this count for nothing
        self._commissioning = True
        self._after_write = False  # the first full read-back after a write decides, without a second write
        self._applying: asyncio.Task[None] | None = None
        self.keys: list[str] = []
        # While unverified (at bind, after a write or a difference) the blocks are read twice as
        # often, so that commissioning ends well inside the start-up time.
        self.fast_interval_s = min(interval_s, COMMISSIONING_INTERVAL_S)
        self.check_interval_s = self.fast_interval_s
        self.applied = 0  # writes of the configuration (at bind and after reboots)
        self.reboots = 0
        self._reboot_seen = False  # a reboot was counted and the configuration not verified since

    # ------------------------------------------------------------------ lifecycle
    def install(self) -> None:
        now = self._clock()
        if self.missing:
            self._mismatch(
                f"profile {self.binding.profile.name} has no readable register {', '.join(self.missing)}: "
                "the configuration cannot be verified"
            )
        service = self.binding.profile.service_period_ms / 1000.0
        for index, block in enumerate(b for b in self.blocks if b not in self.polled_blocks):
            key = f"{self.binding.role}:config-check:{block.start:04x}"
            # Blocks spread over the interval: one small read at a time, each on a tick of its own.
            plan = PollPlan(
                key=key,
                request=read_request(self.binding.address, block.start, block.count),
                interval_s=self.check_interval_s,
                priority=Priority.TELEMETRY,
                phase_s=self.phase_s + 0.001 * index,
                service_period_s=service,
                background=True,
                on_result=self._handler(block),
            )
            self.schedule.add(plan, now)
            self.keys.append(key)

    def uninstall(self) -> None:
        for key in self.keys:
            self.schedule.remove(key)
        self.keys.clear()
        if self._applying is not None:
            self._applying.cancel()

    @property
    def verified(self) -> bool:
        return self.state is ConfigState.VERIFIED

    def status(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "differences": {n: {"read": got, "expected": want} for n, (got, want) in self.diffs.items()},
            "applied": self.applied,
            "reboots": self.reboots,
        }

    # ------------------------------------------------------------------ read-back
    def observe(self, snap: ModuleSnapshot) -> None:
        """A snapshot of the bound module: judge each polled group once all of it was read again."""
        if snap.role != self.binding.role:
            return
        for block in self.polled_blocks:
            readings = [snap.readings.get(n) for n in block.names]
            if any(r is None for r in readings):
                continue
            at = min(r.at for r in readings if r is not None)
            if at <= self._snapshot_at.get(block.start, float("-inf")):
                continue
            self._snapshot_at[block.start] = at
            self._judge(block, {n: snap.readings[n].value for n in block.names}, at)

    def _handler(self, block: Block):  # type: ignore[no-untyped-def]
        profile = self.binding.profile

        def on_result(words: tuple[int, ...], at: float) -> None:
            decoded = profile.decode_block(block.start, words)
            self._judge(block, {n: decoded.get(n) for n in block.names}, at)

        return on_result

    def _judge(self, block: Block, values: dict[str, int | float | None], at: float) -> None:
        self._judge_values(block, values, at)
        if self.state is not ConfigState.VERIFIED:
            self._read_soon()

    def _judge_values(self, block: Block, values: dict[str, int | float | None], at: float) -> None:
        if self._applying is not None and not self._applying.done():
            return  # a write is on its way: only reads taken after it count
        if at <= self._written_at:
            return
        diffs = {n: (v, self.expected[n]) for n, v in values.items() if v is None or round(v) != self.expected[n]}
        self._block_diffs[block.start] = diffs
        self._block_read_at[block.start] = at
        tells = [n for n in block.names if n in self.telltales]
        rebooted = bool(diffs) and bool(tells) and all(values.get(n) == self.defaults[n] for n in tells)
        complete = len(self._block_read_at) == len(self.blocks)
        self.diffs = {n: d for bd in self._block_diffs.values() for n, d in bd.items()}
        if self._after_write:
            # Read-back of our own write: what differs now is a module that does not take it.
            if diffs:
                self._mismatch(f"written, but read back {self._describe(diffs)}")
            if complete:
                self._after_write = False
                self._commissioning = False
                if not self.diffs and not self.missing:
                    self._verified()
            return
        if self._commissioning:
            # Every block read once before anything is written: a value that differs only from
            # what the module holds (not from its defaults) must be in the first write too.
            if not complete:
                return
            if self.diffs:
                self._apply(self.diffs, "at bind")
            elif not self.missing:
                self._commissioning = False
                self._verified()
            return
        if rebooted:
            detail = self._describe(self.diffs)
            if not self._reboot_seen:  # one reboot, however many blocks show it
                self._reboot_seen = True
                self.reboots += 1
                log.error("safety module rebooted: its configuration is back at power-on defaults (%s)", detail)
                self.faults.record_event(REBOOTED, f"safety module back at its power-on defaults: {detail}")
            self._mismatch(detail)
            if self.reapply_after_reboot:
                self._apply(self.diffs, "after the reboot")
            return
        if self.diffs:
            self._mismatch(self._describe(self.diffs))
        elif complete and not self.missing and self.state is not ConfigState.VERIFIED:
            self._verified()

    def _read_soon(self) -> None:
        """Until the configuration is verified again, have it read on every tick the poller can."""
        if self._request_read is not None:
            self._request_read()

    def _describe(self, diffs: dict[str, tuple[int | float | None, int]]) -> str:
        return ", ".join(f"{n} reads {got} (expected {want})" for n, (got, want) in sorted(diffs.items()))

    def _pace(self, interval_s: float) -> None:
        if interval_s != self.check_interval_s:
            self.check_interval_s = interval_s
            self.schedule.set_interval(f"{self.binding.role}:config-check:", interval_s, self._clock())

    def _mismatch(self, detail: str) -> None:
        self.state = ConfigState.MISMATCH
        self._pace(self.fast_interval_s)
        self.faults.raise_external(MISMATCH, detail)

    def _verified(self) -> None:
        self.state = ConfigState.VERIFIED
        self._reboot_seen = False
        self._pace(self.interval_s)
        log.info("safety module configuration verified (%d registers)", len(self.expected))
        if self.faults.external_active(MISMATCH):
            self.faults.clear_external(MISMATCH)  # the latch stays until a technician resets

    # ------------------------------------------------------------------ writing
    def _apply(self, diffs: dict[str, tuple[int | float | None, int]], why: str) -> None:
        if self._applying is not None and not self._applying.done():
            return
        if self.state is not ConfigState.MISMATCH:
            self.state = ConfigState.UNVERIFIED
        self._pace(self.fast_interval_s)
        # What tells a configured module from a fresh one, and whatever else read back wrong: after
        # a reboot every other register holds its power-on default, which is what is expected.
        names = (set(self.telltales) | set(diffs) | set(self.diffs)) - set(self.missing)
        values = {n: self.expected[n] for n in sorted(names)}
        log.warning(
            "safety module configuration %s: writing %d registers (%s)", why, len(values), self._describe(diffs)
        )
        self._applying = asyncio.get_running_loop().create_task(
            self._write_all(values, why), name="safety-config-apply"
        )

    def _frames(self, values: dict[str, int]) -> list[dict[str, int]]:
        """Adjacent registers in one frame each, in address order."""
        profile = self.binding.profile
        frames: list[dict[str, int]] = []
        end = None
        for name in sorted(values, key=lambda n: profile.register(n).address):
            reg = profile.register(name)
            if frames and end == reg.address:
                frames[-1][name] = values[name]
            else:
                frames.append({name: values[name]})
            end = reg.address + len(reg.addresses)
        return frames

    async def _write_all(self, values: dict[str, int], why: str) -> None:
        # Every frame at once: each takes a service tick of its own (see LockedWriter).
        try:
            results = await asyncio.gather(*(self._write(f) for f in self._frames(values)), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except (CodedError, BusError, OSError, ValueError) as exc:
            code = getattr(exc, "code", type(exc).__name__)
            self._mismatch(f"writing the configuration {why} failed ({code}); it will be read back again")
        else:
            self.applied += 1
        finally:
            self._after_write = True
            self._written_at = self._clock()
            self._block_read_at.clear()
            self._block_diffs.clear()
            self._read_soon()
