"""Firmware models driven tick by tick (no process, no pty): the logic, deterministically."""

from __future__ import annotations

import pytest

from drivers.sim import firmware as fw
from drivers.sim.main import DEFAULT_PROFILES
from drivers.sim.registers import RegisterBank, load_profile


class Carriage:
    """A few firmwares wired as peers, with a fake clock."""

    def __init__(self, **units: int) -> None:
        self.now = 0.0
        self.fw: dict[str, fw.Firmware] = {}
        for profile, unit in units.items():
            bank = RegisterBank(load_profile(DEFAULT_PROFILES, profile.replace("_", "-")))
            self.fw[bank.profile.role] = fw.make_firmware(bank, unit, self)

    def firmware_for_role(self, role: str) -> fw.Firmware | None:
        return self.fw.get(role)

    def write(self, role: str, name: str, value: int) -> None:
        """What a master write does: store, then the firmware's write handler."""
        bank = self.fw[role].bank
        bank.set(name, value)
        address = bank.address_of(name)
        assert address is not None, name
        self.fw[role].on_write(address, self.now)

    def get(self, role: str, name: str) -> int:
        return self.fw[role].bank.get(name)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / fw.TICK_S)):
            self.now += fw.TICK_S
            for role in ("travel", "safety", "power", "dock"):
                if role in self.fw:
                    self.fw[role].tick(self.now, fw.TICK_S)


def safety_state(c: Carriage) -> tuple[int, int, int]:
    return c.get("safety", "SAFETY_SYSTEM_STATUS"), c.get("safety", "RESET_FLAG"), c.get("safety", "RELAY1_CONTROL")


def test_unconfigured_safety_module_never_trips() -> None:
    c = Carriage(safety_safefw=5)
    c.fw["safety"].bank.set("ANALOG_INPUT_1", 0)  # would be ERROR if enabled
    c.run(0.05)
    assert safety_state(c) == (fw.SAFETY_OK, 0, 0)
    assert c.get("safety", "DEVICE_ID") == 5


def test_zones_warning_leaves_relay_critical_latches() -> None:
    c = Carriage(safety_safefw=5)
    safety = c.fw["safety"]
    c.write("safety", "ANALOG_1_ENABLE", 1)
    safety.bank.set("ANALOG_INPUT_1", 55)  # <= Z3 (60): warning
    c.run(0.02)
    assert safety_state(c) == (fw.SAFETY_WARNING, 0, 0)
    safety.bank.set("ANALOG_INPUT_1", 30)  # <= Z1 (30): critical
    c.run(0.02)
    assert safety_state(c) == (fw.SAFETY_CRITICAL, 1, 1)
    safety.bank.set("ANALOG_INPUT_1", 200)  # cause gone, but latched: frozen
    c.run(0.05)
    assert safety_state(c) == (fw.SAFETY_CRITICAL, 1, 1)
    c.write("safety", "RESET_FLAG", 0)
    assert safety_state(c) == (fw.SAFETY_OK, 0, 0)


def test_zero_reading_is_error_and_latches() -> None:
    c = Carriage(safety_safefw=5)
    c.fw["safety"].bank.set("ANALOG_INPUT_2", 0)
    c.write("safety", "ANALOG_2_ENABLE", 1)
    c.run(0.02)
    assert safety_state(c) == (fw.SAFETY_ERROR, 1, 1)


def test_reset_into_warning_keeps_relay_until_ok() -> None:
    c = Carriage(safety_safefw=5)
    safety = c.fw["safety"]
    c.write("safety", "ANALOG_1_ENABLE", 1)
    safety.bank.set("ANALOG_INPUT_1", 10)
    c.run(0.02)
    safety.bank.set("ANALOG_INPUT_1", 45)  # warning band
    c.write("safety", "RESET_FLAG", 0)
    assert safety_state(c) == (fw.SAFETY_WARNING, 0, 1)  # relay drops only on OK
    safety.bank.set("ANALOG_INPUT_1", 500)
    c.run(0.02)
    assert safety_state(c) == (fw.SAFETY_OK, 0, 0)


def test_estop_ignores_enables_and_relatches_on_reset() -> None:
    c = Carriage(safety_safefw=5)
    safety = c.fw["safety"]
    assert isinstance(safety, fw.SafetyFirmware)
    safety.press_estop(True)
    assert safety_state(c) == (fw.SAFETY_CRITICAL, 1, 1)
    assert c.get("safety", "EMERGENCY_STOP_STATUS") == 1
    c.write("safety", "RELAY1_CONTROL", 0)  # the master cannot drop a held relay
    c.run(0.02)
    assert c.get("safety", "RELAY1_CONTROL") == 1
    c.write("safety", "RESET_FLAG", 0)
    assert safety_state(c) == (fw.SAFETY_CRITICAL, 1, 1)  # still pressed: latched again at once
    safety.press_estop(False)
    c.run(0.05)
    assert safety_state(c) == (fw.SAFETY_CRITICAL, 1, 1)  # released but not re-armed
    assert c.get("safety", "EMERGENCY_STOP_STATUS") == 0
    c.write("safety", "RESET_FLAG", 0)
    assert safety_state(c) == (fw.SAFETY_OK, 0, 0)


def test_digital_input_at_active_level_is_critical() -> None:
    c = Carriage(safety_safefw=5)
    safety = c.fw["safety"]
    c.write("safety", "DI3_ACTIVE_LEVEL", 1)
    c.write("safety", "DI3_ENABLE", 1)
    c.run(0.02)
    assert safety_state(c) == (fw.SAFETY_OK, 0, 0)
    safety.bank.set("DI3_STATUS", 1)
    c.run(0.02)
    assert safety_state(c) == (fw.SAFETY_CRITICAL, 1, 1)


def start_m1(c: Carriage, speed: int, accel: int = 100, decel: int = 50, direction: int = 1) -> None:
    c.write("travel", "M1_MAX_ACCELERATION", accel)
    c.write("travel", "M1_MAX_DECELERATION", decel)
    c.write("travel", "M1_COMMAND_SPEED", speed)
    c.write("travel", "M1_DIRECTION", direction)
    c.write("travel", "M1_ENABLE", 1)


def test_travel_ramps_at_the_configured_rates_and_caps_at_max_speed() -> None:
    c = Carriage(travel_drvfw=3)
    start_m1(c, speed=80, accel=100, decel=50)
    c.write("travel", "M1_MAX_SPEED", 60)
    c.run(0.30)
    assert c.get("travel", "M1_ACTUAL_SPEED") == pytest.approx(30, abs=1)  # 100 %/s for 0.3 s
    c.run(0.50)
    assert c.get("travel", "M1_ACTUAL_SPEED") == 60  # capped by MAX_SPEED
    assert c.get("travel", "CURRENT") == round(60 * fw.DRIVER_CURRENT_RAW_PER_PERCENT)
    c.write("travel", "M1_DIRECTION", 0)
    c.run(0.40)
    assert c.get("travel", "M1_ACTUAL_SPEED") == pytest.approx(40, abs=1)  # 50 %/s down
    c.run(1.0)
    assert c.get("travel", "M1_ACTUAL_SPEED") == 0


def test_travel_enable_zero_cuts_at_once_and_position_integrates() -> None:
    c = Carriage(travel_drvfw=3)
    start_m1(c, speed=100, accel=10_000)
    c.run(1.0)
    # 100 % = 50 cm/s; one tick of ramp lost at most.
    assert c.get("travel", "M1_POSITION_CURRENT") in range(48, 51)
    c.write("travel", "M1_ENABLE", 0)
    assert c.get("travel", "M1_ACTUAL_SPEED") == 0  # in the write handler, before any tick
    assert c.get("travel", "CURRENT") == 0
    c.run(0.5)
    assert c.get("travel", "M1_POSITION_CURRENT") in range(48, 51)


def test_travel_reverse_decelerates_through_zero_and_clamps_at_zero() -> None:
    c = Carriage(travel_drvfw=3)
    start_m1(c, speed=100, accel=10_000, decel=10_000)
    c.run(0.2)
    c.write("travel", "M1_DIRECTION", 2)
    c.run(1.0)
    assert c.get("travel", "M1_ACTUAL_SPEED") == 100
    assert c.get("travel", "M1_POSITION_CURRENT") == 0  # clamped at 0 cm, never negative


def test_travel_keeps_running_without_master_and_reinit_on_reset_error() -> None:
    c = Carriage(travel_drvfw=3)
    start_m1(c, speed=40, accel=10_000)
    c.run(5.0)  # no master traffic at all
    assert c.get("travel", "M1_ACTUAL_SPEED") == 40 and c.get("travel", "M1_ENABLE") == 1
    c.write("travel", "RESET_ERROR_CMD", 1)
    assert c.get("travel", "M1_ENABLE") == 0 and c.get("travel", "M1_ACTUAL_SPEED") == 0
    assert c.get("travel", "M1_MAX_ACCELERATION") == 5  # profile default again
    assert c.get("travel", "DEVICE_ID") == 3
    c.run(0.1)
    assert c.get("travel", "M1_ACTUAL_SPEED") == 0


def test_deadman_trips_after_window_without_heartbeat_change() -> None:
    c = Carriage(travel_drvfw_deadman=3)
    window = c.fw["travel"].bank.profile.deadman_window_ms / 1000
    start_m1(c, speed=50, accel=10_000)
    for i in range(1, 20):  # heartbeat every 100 ms: keeps running
        c.write("travel", "HEARTBEAT", i)
        c.run(0.1)
    assert c.get("travel", "M1_ENABLE") == 1 and c.get("travel", "M1_ACTUAL_SPEED") == 50
    c.write("travel", "HEARTBEAT", 20)  # the last change
    c.run(0.05)
    c.write("travel", "HEARTBEAT", 20)  # same value again: not a change
    c.run(window - 0.08)
    assert c.get("travel", "M1_ENABLE") == 1
    c.run(0.05)
    assert c.get("travel", "M1_ENABLE") == 0 and c.get("travel", "M1_ACTUAL_SPEED") == 0
    assert c.get("travel", "SYSTEM_ERROR") & fw.DEADMAN_TRIPPED_BIT


def test_deadman_idle_does_not_trip_and_enable_starts_a_fresh_window() -> None:
    c = Carriage(travel_drvfw_deadman=3)
    c.run(2.0)  # nothing enabled, no heartbeat: fine
    assert c.get("travel", "SYSTEM_ERROR") == 0
    start_m1(c, speed=50, accel=10_000)
    c.run(0.1)
    assert c.get("travel", "M1_ENABLE") == 1


def test_power_drains_with_motion_and_dock_follows_position() -> None:
    c = Carriage(travel_drvfw=3, power_v2=2, dock_readonly=4)
    soc0 = c.get("power", "BATTERY_SOC")
    c.run(1.0)
    assert c.get("power", "BATTERY_SOC") == soc0  # static while the motors stand still
    start_m1(c, speed=100, accel=10_000)
    c.run(10.0)
    # 100 % on one channel for 10 s = 1 % SOC = 10 raw.
    assert soc0 - c.get("power", "BATTERY_SOC") == pytest.approx(10, abs=1)
    assert c.get("power", "BATTERY_CURRENT") == round(100 * fw.BATTERY_CURRENT_RAW_PER_PERCENT)
    assert c.get("dock", "POSITION_X") == c.get("travel", "M1_POSITION_CURRENT") * 10 == 3000
    c.write("travel", "M1_ENABLE", 0)
    c.run(0.02)
    assert c.get("power", "BATTERY_CURRENT") == 0
