"""From the supervisor's verdict and the link's health to the state machine's `Conditions`.

One pure function, so the controller and the property tests use the same rule: a latched fault
or an active E-stop can never turn into "motion allowed".
"""

from __future__ import annotations

from agent.control.state_machine import Conditions
from agent.safety.faults import Level
from agent.safety.supervisor import Verdict


def build_conditions(
    verdict: Verdict, *, comms_ok: bool, sensors_ok: bool, location_ok: bool, target_valid: bool
) -> Conditions:
    return Conditions(
        estop_active=verdict.estop_input,
        latched_faults=verdict.latched_codes,
        safety_ok=verdict.level <= Level.WARNING,
        comms_ok=comms_ok,
        sensors_ok=sensors_ok,
        location_ok=location_ok,
        target_valid=target_valid,
        battery_ok=not verdict.has("BATTERY_CRITICAL"),
    )
