"""Shared by the state-machine tests: a path of events (each accepted with all conditions met)
from BOOT to every state."""

from __future__ import annotations

from agent.control.states import Event as E
from agent.control.states import State as S

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
