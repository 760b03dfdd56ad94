"""Shared by the state-machine tests: the conditions under which every guard passes, and a path
of events (each accepted with those conditions) from BOOT to every state."""

from __future__ import annotations

from agent.control.state_machine import Conditions
from agent.control.states import Event as E
from agent.control.states import State as S

CLEAR = Conditions(
    estop_active=False,
    latched_faults=frozenset(),
    safety_ok=True,
    comms_ok=True,
    sensors_ok=True,
    location_ok=True,
    target_valid=True,
    battery_ok=True,
)

PATHS: dict[S, list[E]] = {
    S.BOOT: [],
    S.INIT: [E.BOOT_COMPLETE],
    S.IDLE: [E.BOOT_COMPLETE, E.INIT_COMPLETE],
    S.MOVE: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.MOVE_COMMAND],
    S.DOCK: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.DOCK_COMMAND],
    S.PAUSED: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.MOVE_COMMAND, E.PAUSE_COMMAND],
    S.CONFIG: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.CONFIG_COMMAND],
    S.FAULT: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.FAULT_DETECTED],
    S.ESTOP: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.ESTOP_TRIGGERED],
    S.SAFE: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.ESTOP_TRIGGERED, E.SAFE_RESET],
    S.SHUTDOWN: [E.BOOT_COMPLETE, E.INIT_COMPLETE, E.SHUTDOWN],
}
