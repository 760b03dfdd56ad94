"""The fault catalogue: every verdict the supervisor can give, with its level, latch rule and hint.

Codes are stable identifiers: they appear in logs, in the API, upstream and in the audit log, and
technicians look them up. Add new codes; never rename or reuse one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType


class Level(enum.IntEnum):
    """Verdict levels, ordered: a higher level overrides a lower one."""

    OK = 0
    WARNING = 1  # keep going, slower
    PROTECTIVE_STOP = 2  # stop motion, controlled; latched
    EMERGENCY_STOP = 3  # stop motion now; latched

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class FaultSpec:
    code: str
    level: Level
    latched: bool
    hint: str


_SPECS = [
    FaultSpec(
        "ESTOP_PRESSED",
        Level.EMERGENCY_STOP,
        True,
        "An E-stop button is pressed. Find out why, release it, then reset from the API or panel.",
    ),
    FaultSpec(
        "ESTOP_REQUESTED",
        Level.EMERGENCY_STOP,
        True,
        "Someone requested an E-stop through the API. Check the audit log for who and why, then reset.",
    ),
    FaultSpec(
        "ESTOP_INPUT_DISCREPANCY",
        Level.EMERGENCY_STOP,
        True,
        "The two E-stop channels disagree: check the E-stop wiring and contacts before resetting.",
    ),
    FaultSpec(
        "SAFETY_MODULE_CRITICAL",
        Level.PROTECTIVE_STOP,
        True,
        "The safety module reports CRITICAL (zone 1 intrusion or an active safety input). Clear the area, then reset.",
    ),
    FaultSpec(
        "SAFETY_MODULE_ERROR",
        Level.EMERGENCY_STOP,
        True,
        "The safety module reports a sensor error (an enabled sensor reads 0). Check its sensors and cabling.",
    ),
    FaultSpec(
        "SAFETY_MODULE_LATCHED",
        Level.PROTECTIVE_STOP,
        True,
        "The safety module's relay latch (RESET_FLAG) is set; it is released by a reset once the cause is gone.",
    ),
    FaultSpec(
        "SAFETY_MODULE_WARNING",
        Level.WARNING,
        False,
        "The safety module reports WARNING (zone 2/3): the carriage continues at reduced speed.",
    ),
    FaultSpec(
        "OBSTACLE_EMERGENCY",
        Level.EMERGENCY_STOP,
        True,
        "An obstacle is inside the emergency distance. Clear the track, then reset.",
    ),
    FaultSpec(
        "OBSTACLE_NEAR",
        Level.WARNING,
        False,
        "An obstacle is inside the warning distance: speed is reduced until it is beyond the safe distance.",
    ),
    FaultSpec(
        "SAFETY_LINK_LOST",
        Level.EMERGENCY_STOP,
        True,
        "The safety module stopped answering: check its power, address 5 wiring and RS485 termination.",
    ),
    FaultSpec(
        "POWER_LINK_WARNING",
        Level.WARNING,
        False,
        "The power module stopped answering; the carriage stops if it does not answer again within the countdown.",
    ),
    FaultSpec(
        "POWER_LINK_LOST",
        Level.PROTECTIVE_STOP,
        True,
        "The power module has not answered for longer than the countdown: check its supply and RS485 link.",
    ),
    FaultSpec(
        "TRAVEL_LINK_LOST",
        Level.PROTECTIVE_STOP,
        True,
        "The travel motor driver stopped answering: motion is no longer commanded. Check the driver and its link.",
    ),
    FaultSpec(
        "DOCK_LINK_LOST",
        Level.OK,
        False,
        "The dock module stopped answering; docking data is unavailable (no effect on motion).",
    ),
    FaultSpec("BATTERY_LOW", Level.WARNING, False, "Battery below the warning level: send the carriage to charge."),
    FaultSpec(
        "BATTERY_CRITICAL",
        Level.PROTECTIVE_STOP,
        True,
        "Battery below the stop level: motion is refused. Charge the battery, then reset.",
    ),
    FaultSpec(
        "BUS_PORT_DOWN",
        Level.EMERGENCY_STOP,
        True,
        "The RS485 port is gone: no module can be supervised. Check the adapter, cable and udev symlink.",
    ),
    FaultSpec(
        "STOP_NOT_CONFIRMED",
        Level.EMERGENCY_STOP,
        True,
        "A stop was written but the driver did not confirm zero speed: use the hardware E-stop and check the driver.",
    ),
    FaultSpec(
        "LOOP_STALL",
        Level.PROTECTIVE_STOP,
        True,
        "The agent's control loop stalled: check CPU load and the journal for what blocked it.",
    ),
    FaultSpec("LOOP_LAG", Level.WARNING, False, "The agent's event loop is running late: check CPU load."),
    FaultSpec(
        "STORE_UNAVAILABLE",
        Level.PROTECTIVE_STOP,
        True,
        "The local database cannot be written (disk full or read-only): commands are refused. Free space, then reset.",
    ),
    FaultSpec(
        "STORE_CORRUPT",
        Level.PROTECTIVE_STOP,
        True,
        "The local database was corrupt and was moved aside; a new one was started."
        " Keep the old file for analysis, then reset.",
    ),
    FaultSpec(
        "OUTPUTS_NOT_SAFE",
        Level.EMERGENCY_STOP,
        True,
        "The travel driver reads back enabled or with a speed set while no motion is commanded: something else "
        "writes to it, or it ignored a stop. Use the hardware E-stop, check the RS485 line for a second master,"
        " then reset.",
    ),
    FaultSpec(
        "UNCOMMANDED_MOTION",
        Level.EMERGENCY_STOP,
        True,
        "The carriage moved, or the motor drew current, after a confirmed stop. Use the hardware E-stop and check "
        "the driver's output stage and brake before resetting.",
    ),
    FaultSpec(
        "TRAVEL_STALLED",
        Level.PROTECTIVE_STOP,
        True,
        "Speed was commanded but the position did not change: check for a jam, a slipping wheel, the encoder "
        "and the driver's MAX_SPEED before resetting.",
    ),
    FaultSpec(
        "SAFETY_DATA_STALE",
        Level.EMERGENCY_STOP,
        True,
        "The safety module's status or an enabled sensor's distance is no longer read in time"
        " (the module may answer other reads)."
        " Check the bus load, the module's wiring and its error counters in the status page.",
    ),
    FaultSpec(
        "SAFETY_SENSORS_UNKNOWN",
        Level.PROTECTIVE_STOP,
        True,
        "The agent does not know which obstacle sensors of the safety module are enabled"
        " (their enable flags were not read, or not recently): motion is refused."
        " Check the safety module's link, then reset.",
    ),
    FaultSpec(
        "SAFETY_CONFIG_MISMATCH",
        Level.PROTECTIVE_STOP,
        True,
        "The safety module does not hold the configuration of [safety_module] (the detail names the register, "
        "what it holds and what is expected). Find out who changed it; restart the agent to write it again "
        "(it is applied at bind), wait for it to read back right, then reset.",
    ),
    FaultSpec(
        "SAFETY_MODULE_REBOOTED",
        Level.PROTECTIVE_STOP,
        True,
        "The safety module came back with its power-on defaults (a brown-out or MCU reset): its sensors were off. "
        "Check its supply and wiring; once the configuration reads back right, reset.",
    ),
    FaultSpec(
        "TASK_DIED",
        Level.EMERGENCY_STOP,
        True,
        "A task of the agent ended unexpectedly (the detail names it): motion was stopped and the watchdogs are no "
        "longer fed, so the agent will be restarted by its watchdog. Send the journal (journalctl -u oht-agent-core) "
        "to the developers.",
    ),
]

CATALOGUE: MappingProxyType[str, FaultSpec] = MappingProxyType({s.code: s for s in _SPECS})


def spec(code: str) -> FaultSpec:
    return CATALOGUE[code]
