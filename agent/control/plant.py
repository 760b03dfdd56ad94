"""The controller's view of the hardware: bound modules and profile-checked register access.

Everything that turns a command into bus traffic goes through here, so a register name is
always resolved through the bound module's profile and a write is range-checked before it
reaches the bus. A travel write that can make the carriage move (a nonzero enable, speed,
direction or dead-man heartbeat) is refused here unless it carries an output permit, and the bus
drops it at the wire if a stop revoked that permit meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.safety.stop import ENERGISING_REGISTERS
from drivers.modbus.frames import read_request, write_request
from drivers.modbus.interlock import Permit
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_register_reads
from drivers.modbus.schedule import Priority
from drivers.polling import ModulePoller
from drivers.profiles import plan_write
from drivers.snapshots import Quality, SnapshotBoard
from oht_errors import CodedError, ErrorKind


class ModuleNotBound(CodedError):
    code = "MODULE_NOT_BOUND"
    kind = ErrorKind.UNAVAILABLE
    hint = "the module for this role was not found at start-up; check the status page's discovery problems"


class OutputNotPermitted(CodedError):
    code = "OUTPUT_NOT_PERMITTED"
    kind = ErrorKind.INTERNAL
    hint = (
        "an energising travel write needs an output permit taken where motion was checked; this is a bug in the caller"
    )


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

    def poller(self, role: str) -> ModulePoller:
        poller = self.hw.pollers.get(role)
        if poller is None:
            raise ModuleNotBound(f"no {role} module is bound")
        return poller

    def permit(self, reason: str = "") -> Permit:
        """Leave to energise the travel outputs until the next stop request: take it in the same
        step (no await between) as the check that motion is allowed."""
        return self.hw.master.interlock.issue(reason)

    @staticmethod
    def _permit_for(role: str, values: dict[str, float | int], permit: Permit | None) -> Permit | None:
        energising = role == "travel" and any(v != 0 and n in ENERGISING_REGISTERS for n, v in values.items())
        if energising and permit is None:
            raise OutputNotPermitted(f"travel write of {sorted(values)} without an output permit")
        return permit

    def bound(self, role: str) -> bool:
        return role in self.hw.pollers

    async def write(
        self,
        role: str,
        name: str,
        value: float | int,
        priority: Priority = Priority.COMMAND,
        *,
        permit: Permit | None = None,
    ) -> None:
        poller = self.poller(role)
        permit = self._permit_for(role, {name: value}, permit)
        address, words = plan_write(poller.binding.profile, name, value)
        await self.hw.master.execute(write_request(poller.binding.address, address, words), priority, permit=permit)

    async def write_many(
        self,
        role: str,
        values: dict[str, float | int],
        priority: Priority = Priority.COMMAND,
        *,
        permit: Permit | None = None,
    ) -> None:
        """Several registers; adjacent ones go out in one frame, in address order."""
        poller = self.poller(role)
        permit = self._permit_for(role, values, permit)
        planned = sorted(plan_write(poller.binding.profile, n, v) for n, v in values.items())
        frames: list[tuple[int, list[int]]] = []
        for address, words in planned:
            if frames and frames[-1][0] + len(frames[-1][1]) == address:
                frames[-1][1].extend(words)
            else:
                frames.append((address, list(words)))
        for address, words in frames:
            await self.hw.master.execute(write_request(poller.binding.address, address, words), priority, permit=permit)

    async def read(self, role: str, names: list[str], priority: Priority = Priority.COMMAND) -> dict[str, float | int]:
        """Read registers now (not from the snapshot), decoded through the profile."""
        poller = self.poller(role)
        profile = poller.binding.profile
        regs = [profile.register(n) for n in names]
        out: dict[str, float | int] = {}
        for start, count in plan_register_reads(
            regs,
            max_registers=profile.max_read_registers,
            max_gap=profile.max_read_registers,
            readable=profile.is_readable,
        ):
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
