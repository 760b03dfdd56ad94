"""Which set-aside slave to probe next: the choice, kept apart from the bus task so it can be tested alone.

A slave that failed repeatedly is set aside and only probed, with a growing back-off, until it
answers again. Probes run on their own schedule even while healthy polls keep the bus busy (a
gap as long as a probe's deadline may never come). Among the slaves whose probe is due, the one
that has waited longest goes first, and a slave served once per service tick (the safety module)
counts as having waited `TICK_SERVED_HEADSTART_S` longer, because the whole carriage waits for
it. The head start is shorter than the shortest probe back-off, so a slave probed once cannot
come back ahead of one that was already waiting: no set-aside slave starves. Every due slave is
considered, not only the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TICK_SERVED_HEADSTART_S = 0.1  # below the bus master's shortest probe back-off (0.2 s)


@dataclass(frozen=True)
class ProbeCandidate:
    address: int
    next_probe_at: float
    tick_served: bool  # the slave serves one frame per service tick (the safety module)


def pick_probe(waiting: Iterable[ProbeCandidate], now: float) -> tuple[int | None, float | None]:
    """(address to probe now, None) or (None, when the next probe falls due; None if none waits)."""
    due: list[ProbeCandidate] = []
    soonest: float | None = None
    for candidate in waiting:
        if candidate.next_probe_at <= now:
            due.append(candidate)
        elif soonest is None or candidate.next_probe_at < soonest:
            soonest = candidate.next_probe_at
    if not due:
        return None, soonest
    best = min(due, key=lambda c: (c.next_probe_at - (TICK_SERVED_HEADSTART_S if c.tick_served else 0.0), c.address))
    return best.address, None
