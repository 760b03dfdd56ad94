"""The output interlock: a write that can energise an output goes to the wire only under a live permit.

A permit is the interlock's epoch at the moment it was issued. Every stop request revokes all
permits issued before it (the epoch moves on). The bus task checks the permit of an energising
write immediately before the frame is written to the port, with no await in between, so a write
that was queued, held back for a phase-locked poll, or waiting for a retry when a stop came can
never reach the driver after that stop. Checking at queue time would not do: the stop and the
write race for the bus, and the stop may win.

The interlock also records when the last energising frame actually went to the wire. A stop's
confirmation may stand for a later stop request only while no such frame has gone out since the
confirmation's final read-back was sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.modbus.errors import BusError


class PermitRevoked(BusError):
    """An energising write whose permit a stop revoked: it was not written."""

    code = "OUTPUT_PERMIT_REVOKED"
    hint = "a stop was requested after this write was issued; the write was dropped before it reached the bus"


@dataclass(frozen=True)
class Permit:
    """Leave to energise outputs, valid until the next stop request."""

    epoch: int
    reason: str = ""


class OutputInterlock:
    """Issues and revokes permits; remembers when energising frames went to the wire."""

    def __init__(self) -> None:
        self._epoch = 0
        self.revocations = 0
        self.refused = 0  # energising frames dropped because their permit was revoked
        self.last_energising_on_wire: float | None = None  # time.monotonic() when the frame was written

    @property
    def epoch(self) -> int:
        return self._epoch

    def issue(self, reason: str = "") -> Permit:
        """A permit for writes issued now. Take it in the same step as the check that allows motion."""
        return Permit(self._epoch, reason)

    def revoke_all(self) -> None:
        """Every permit issued so far is void: called at the moment a stop is requested."""
        self._epoch += 1
        self.revocations += 1

    def valid(self, permit: Permit) -> bool:
        return permit.epoch == self._epoch

    def check(self, permit: Permit) -> None:
        """Raise PermitRevoked unless `permit` is still valid (called by the bus task before writing)."""
        if permit.epoch != self._epoch:
            self.refused += 1
            raise PermitRevoked(
                f"energising write dropped: its permit ({permit.reason or 'motion'}) was revoked by a stop"
            )

    def note_on_wire(self, at: float) -> None:
        self.last_energising_on_wire = at

    def energised_since(self, t: float) -> bool:
        """True if an energising frame went to the wire at or after `t`."""
        last = self.last_energising_on_wire
        return last is not None and last >= t
