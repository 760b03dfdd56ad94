"""The controller's view of the hardware: bound modules and profile-checked register access.

Everything that turns a command into bus traffic goes through here, so a register name is
always resolved through the bound module's profile and a write is range-checked before it
reaches the bus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import CodedError
from drivers.modbus.frames import read_request, write_request
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_register_reads
from drivers.modbus.schedule import Priority
from drivers.polling import ModulePoller
from drivers.profiles import plan_write
from drivers.snapshots import Quality, SnapshotBoard


class ModuleNotBound(CodedError):
    code = "MODULE_NOT_BOUND"
    hint = "the module for this role was not found at start-up; check the status page's discovery problems"


class Hardware(Protocol):
    """What the runtime provides: the bus master, the bound modules, the snapshot board."""

    master: BusMaster
    board: SnapshotBoard
    pollers: dict[str, ModulePoller]

    def set_moving(self, moving: bool) -> None: ...

    def safety_config_verified(self) -> bool: ...


@dataclass
class Plant:
    hw: Hardware
    on_travel_write: Callable[[], None] | None = None

    def poller(self, role: str) -> ModulePoller:
        poller = self.hw.pollers.get(role)
        if poller is None:
            raise ModuleNotBound(f"no {role} module is bound")
        return poller

    def _note(self, role: str) -> None:
        if role == "travel" and self.on_travel_write is not None:
            self.on_travel_write()  # any travel write may re-enable outputs: the next stop goes to the bus

    def bound(self, role: str) -> bool:
        return role in self.hw.pollers

    async def write(self, role: str, name: str, value: float | int, priority: Priority = Priority.COMMAND) -> None:
        poller = self.poller(role)
        self._note(role)
        address, words = plan_write(poller.binding.profile, name, value)
        await self.hw.master.execute(write_request(poller.binding.address, address, words), priority)

    async def write_many(self, role: str, values: dict[str, float | int], priority: Priority = Priority.COMMAND) -> None:
        """Several registers; adjacent ones go out in one frame, in address order."""
        poller = self.poller(role)
        self._note(role)
        planned = sorted(plan_write(poller.binding.profile, n, v) for n, v in values.items())
        frames: list[tuple[int, list[int]]] = []
        for address, words in planned:
            if frames and frames[-1][0] + len(frames[-1][1]) == address:
                frames[-1][1].extend(words)
            else:
                frames.append((address, list(words)))
        for address, words in frames:
            await self.hw.master.execute(write_request(poller.binding.address, address, words), priority)

    async def read(self, role: str, names: list[str], priority: Priority = Priority.COMMAND) -> dict[str, float | int]:
        """Read registers now (not from the snapshot), decoded through the profile."""
        poller = self.poller(role)
        profile = poller.binding.profile
        regs = [profile.register(n) for n in names]
        out: dict[str, float | int] = {}
        for start, count in plan_register_reads(regs, max_registers=profile.max_read_registers,
                                                max_gap=profile.max_read_registers, readable=profile.is_readable):
            words = await self.hw.master.execute(read_request(poller.binding.address, start, count), priority)
            decoded = profile.decode_block(start, words)
            out.update({n: decoded[n] for n in names if n in decoded})
        return out

    def value(self, role: str, name: str) -> float | int | None:
        """The latest fresh value from the poll snapshot, or None."""
        poller = self.hw.pollers.get(role)
        if poller is None:
            return None
        snap = poller.snapshot
        if snap.quality(name) is not Quality.FRESH:
            return None
        return snap.value(name)
