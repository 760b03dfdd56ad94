"""OHT-50 slave firmware simulator: Modbus RTU on a pty, with fault injection.

A separate process and an independent peer of the bus master: it reads the register profiles but
imports nothing from ``agent`` or the rest of ``drivers``. Tests use:

- ``SimProcess(link)``: start ``python -m drivers.sim`` and wait for READY (context manager);
- ``SimControl(path)``: the control socket (faults, inputs, ground truth), sync;
- ``AsyncSimControl(path)``: the same methods as coroutines.

These are imported lazily so that ``python -m drivers.sim`` starts without loading asyncio.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncSimControl", "SimControl", "SimControlError", "SimProcess"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from drivers.sim import client

        return getattr(client, name)
    raise AttributeError(name)
