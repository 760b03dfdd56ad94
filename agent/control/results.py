"""The codes a command's result can carry (`error_code` of a failed or cancelled command), declared once.

A command ends with one of these, with the code of the fault that stopped it (agent/safety/faults.py),
or with the code of the error that refused it (a `CodedError`). The codes are on the wire (the
API's command records, the results sent upstream): add new ones, never rename.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from agent.control.states import State
from agent.safety import faults

__all__ = ["RESULTS", "STOP_NOT_CONFIRMED", "TRAVEL_STALLED", "ResultCode", "ResultInfo", "left_state"]


class ResultCode(enum.StrEnum):
    SHUTDOWN = "SHUTDOWN"
    STOPPED = "STOPPED"
    CANCELLED = "CANCELLED"
    MOTION_WINDOW_EXPIRED = "MOTION_WINDOW_EXPIRED"
    MOTION_WITHDRAWN = "MOTION_WITHDRAWN"
    MOTION_TIME_EXCEEDED = "MOTION_TIME_EXCEEDED"
    TRACK_LIMIT = "TRACK_LIMIT"
    DOCK_TIMEOUT = "DOCK_TIMEOUT"
    READBACK_MISMATCH = "READBACK_MISMATCH"
    REGISTER_SAFETY_CRITICAL = "REGISTER_SAFETY_CRITICAL"
    # A running command is cancelled when the robot leaves motion for one of these states.
    STATE_BOOT = "STATE_BOOT"
    STATE_INIT = "STATE_INIT"
    STATE_IDLE = "STATE_IDLE"
    STATE_CONFIG = "STATE_CONFIG"
    STATE_FAULT = "STATE_FAULT"
    STATE_ESTOP = "STATE_ESTOP"
    STATE_SAFE = "STATE_SAFE"
    STATE_SHUTDOWN = "STATE_SHUTDOWN"


class ResultInfo(NamedTuple):
    meaning: str
    hint: str


_LEFT = "The robot left motion for state {state}, so the running command was cancelled."
_LEFT_HINT = "Read the state change in GET /api/v1/status or the log (the reason is there), then submit again."

RESULTS: Mapping[ResultCode, ResultInfo] = MappingProxyType(
    {
        ResultCode.SHUTDOWN: ResultInfo(
            "The agent shut down while the command ran.", "Submit the command again once the agent is back."
        ),
        ResultCode.STOPPED: ResultInfo(
            "A stop command ended this command.", "Expected after a stop; submit the command again if still wanted."
        ),
        ResultCode.CANCELLED: ResultInfo(
            "A user cancelled the command (the audit log says who).", "Submit it again if it is still wanted."
        ),
        ResultCode.MOTION_WINDOW_EXPIRED: ResultInfo(
            "The running motion did not refresh in time, so it was stopped.",
            "The control loop was late: check the CPU load and the log for what blocked it.",
        ),
        ResultCode.MOTION_WITHDRAWN: ResultInfo(
            "Motion was no longer allowed (a fault, a state change, stale sensors) or it was queued before a restart.",
            "Read the faults in GET /api/v1/status; motion queued before a restart never resumes by itself.",
        ),
        ResultCode.MOTION_TIME_EXCEEDED: ResultInfo(
            "The motion reached its time bound before its distance or the dock.",
            "Check for a slow or blocked carriage; a longer move needs a larger duration.",
        ),
        ResultCode.TRACK_LIMIT: ResultInfo(
            "The carriage reached the end of the track, so it was stopped.",
            "Move in the other direction; check the encoder if the position is wrong.",
        ),
        ResultCode.DOCK_TIMEOUT: ResultInfo(
            "The dock was not reached within the command's duration.",
            "Check the dock module's status and the track in front of the dock.",
        ),
        ResultCode.READBACK_MISMATCH: ResultInfo(
            "The value read back after the write is not the value written.",
            "The module ignored or changed the write: check its state and its firmware against the profile.",
        ),
        ResultCode.REGISTER_SAFETY_CRITICAL: ResultInfo(
            "A raw register write was refused because the register is safety-critical.",
            "Use the dedicated command (move, stop, reset) instead of a register write.",
        ),
        **{
            code: ResultInfo(_LEFT.format(state=code.removeprefix("STATE_")), _LEFT_HINT)
            for code in ResultCode
            if code.startswith("STATE_")
        },
    }
)

_LEFT_STATE: Mapping[State, ResultCode] = MappingProxyType(
    {
        State.BOOT: ResultCode.STATE_BOOT,
        State.INIT: ResultCode.STATE_INIT,
        State.IDLE: ResultCode.STATE_IDLE,
        State.CONFIG: ResultCode.STATE_CONFIG,
        State.FAULT: ResultCode.STATE_FAULT,
        State.ESTOP: ResultCode.STATE_ESTOP,
        State.SAFE: ResultCode.STATE_SAFE,
        State.SHUTDOWN: ResultCode.STATE_SHUTDOWN,
    }
)


def left_state(state: State) -> ResultCode:
    """The result of a command cancelled because the robot entered `state` (one of the non-motion states)."""
    return _LEFT_STATE[state]


# Faults that a command can also end with; declared in the fault catalogue (a KeyError here if one goes).
STOP_NOT_CONFIRMED: Final = faults.spec("STOP_NOT_CONFIRMED").code
TRAVEL_STALLED: Final = faults.spec("TRAVEL_STALLED").code
