"""Per-module firmware behaviour: what a slave does to its registers between and after frames.

Each class models one firmware of docs/firmware.md#register-maps, including the quirks an
agent has to cope with: the safety latch on RESET_FLAG, the travel driver that keeps running when
the master goes silent, RESET_ERROR_CMD re-initialising every register of the driver. Registers
are addressed by the names in the profile, so a profile lacking a register simply disables the
behaviour that needs it instead of crashing the simulator.

The event loop calls ``tick`` every ``TICK_S`` (10 ms, the evaluation period of both real
firmwares' fast tasks) with the real elapsed time, so a late tick does not distort physics.
"""

from __future__ import annotations

from typing import Protocol

from drivers.sim.registers import RegisterBank

TICK_S = 0.010

# Travel driver physics.
#: 100 % speed moves the carriage this many cm per second.
CM_PER_S_AT_FULL_SPEED = 50.0
POSITION_MIN_CM = 0.0
POSITION_MAX_CM = 300.0
#: Driver CURRENT register (A x100) per % of summed actual speed: 100 % -> 5.00 A.
DRIVER_CURRENT_RAW_PER_PERCENT = 5.0
#: SYSTEM_ERROR bit set by the dead-man variant when it drops its outputs.
DEADMAN_TRIPPED_BIT = 0x0100

# Power module.
#: BATTERY_SOC raw units (0.1 %) drained per second per % of summed driver speed:
#: 100 % on one channel -> 1 raw per second = 1 % SOC per 10 s.
SOC_DRAIN_RAW_PER_PERCENT_S = 0.01
#: BATTERY_CURRENT raw units (0.1 A) per % of summed driver speed: 100 % -> 10.0 A.
BATTERY_CURRENT_RAW_PER_PERCENT = 1.0

# Safety module verdicts (SAFETY_SYSTEM_STATUS).
SAFETY_OK = 0
SAFETY_WARNING = 1
SAFETY_CRITICAL = 2
SAFETY_ERROR = 3

RESET_ERROR_CMD = "RESET_ERROR_CMD"


class Peers(Protocol):
    """How one firmware finds another on the same simulated carriage (power drains with motion)."""

    def firmware_for_role(self, role: str) -> Firmware | None: ...


class Firmware:
    """Generic slave: stores writes, answers the identity block, clears errors on request."""

    role = ""

    def __init__(self, bank: RegisterBank, unit: int, peers: Peers) -> None:
        self.bank = bank
        self.unit = unit
        self.peers = peers
        #: Set by the control socket: the output stage keeps doing what it did, whatever is written.
        self.outputs_stuck = False
        self.power_on(0.0)

    def power_on(self, now: float) -> None:
        """Registers back to profile defaults (boot, reboot, full re-init)."""
        self.bank.load_defaults()
        self.bank.set("DEVICE_ID", self.unit)
        if not self.bank.get("MODULE_TYPE"):
            self.bank.set("MODULE_TYPE", self.bank.profile.module_type)
        self.reset_state(now)

    def reset_state(self, now: float) -> None:
        """Re-derive internal (non-register) state from the registers."""

    def on_write(self, address: int, now: float) -> None:
        """A master write has been stored at ``address`` (called once per written register)."""
        if address == self.bank.address_of(RESET_ERROR_CMD) and self.bank.get(RESET_ERROR_CMD) == 1:
            self.reset_errors(now)

    def reset_errors(self, now: float) -> None:
        self.bank.set("SYSTEM_ERROR", 0)
        self.bank.set(RESET_ERROR_CMD, 0)

    def on_forced(self, address: int, now: float) -> None:
        """A register was forced through the control socket (no side effects beyond state sync)."""
        self.reset_state(now)

    def tick(self, now: float, dt: float) -> None:
        """Periodic evaluation (every TICK_S)."""


class SafetyFirmware(Firmware):
    """SAFE-FW: zones, DIs, the E-stop loop input and the RESET_FLAG latch.

    The map and the slave's decisions: docs/firmware.md#safety-module-safe-fw.
    """

    role = "safety"

    def reset_state(self, now: float) -> None:
        self.estop_pressed = getattr(self, "estop_pressed", False)
        #: True while relay 1 is energised by a trip and not yet released by an OK evaluation.
        self.relay_held = bool(self.bank.get("RESET_FLAG")) and bool(self.bank.get("RELAY1_CONTROL"))

    def power_on(self, now: float) -> None:
        # The E-stop is a physical input: a reboot of the module does not release the button.
        super().power_on(now)
        self.evaluate()

    def press_estop(self, pressed: bool) -> None:
        self.estop_pressed = pressed
        self.evaluate()

    def verdict(self) -> int:
        b = self.bank
        status = SAFETY_OK
        z1 = b.get("SAFETY_ZONE1_THRESHOLD")
        z2 = b.get("SAFETY_ZONE2_THRESHOLD")
        z3 = b.get("SAFETY_ZONE3_THRESHOLD")
        for n in range(1, 5):
            if not b.get(f"ANALOG_{n}_ENABLE"):
                continue
            distance = b.get(f"ANALOG_INPUT_{n}")
            if distance == 0:
                status = max(status, SAFETY_ERROR)
            elif distance <= z1:
                status = max(status, SAFETY_CRITICAL)
            elif distance <= z2 or distance <= z3:
                status = max(status, SAFETY_WARNING)
        for n in range(1, 5):
            if b.get(f"DI{n}_ENABLE") and b.get(f"DI{n}_STATUS") == b.get(f"DI{n}_ACTIVE_LEVEL"):
                status = max(status, SAFETY_CRITICAL)
        if self.estop_pressed:
            # The hardware E-stop loop is wired into the safety module: no enable needed.
            status = max(status, SAFETY_CRITICAL)
        return status

    def evaluate(self) -> None:
        b = self.bank
        b.set("EMERGENCY_STOP_STATUS", 1 if self.estop_pressed else 0)
        status = self.verdict()
        if b.get("RESET_FLAG"):
            # Latched: status frozen, relay 1 held energised until the master re-arms.
            if self.relay_held:
                b.set("RELAY1_CONTROL", 1)
            return
        b.set("SAFETY_SYSTEM_STATUS", status)
        if status in (SAFETY_CRITICAL, SAFETY_ERROR):
            b.set("RESET_FLAG", 1)
            b.set("RELAY1_CONTROL", 1)
            self.relay_held = True
        elif status == SAFETY_OK and self.relay_held:
            b.set("RELAY1_CONTROL", 0)
            self.relay_held = False
        # WARNING never touches the relay.

    def on_write(self, address: int, now: float) -> None:
        super().on_write(address, now)
        if address == self.bank.address_of("RESET_FLAG") and self.bank.get("RESET_FLAG") == 0:
            # Re-arm: the next evaluation decides at once (it re-latches if the cause persists).
            self.evaluate()

    def on_forced(self, address: int, now: float) -> None:
        # Forced inputs (obstacle, DI, E-stop) are seen by the very next evaluation: run it now.
        self.evaluate()

    def tick(self, now: float, dt: float) -> None:
        self.evaluate()


class TravelFirmware(Firmware):
    """DRV-FW two-channel DC driver: ramps, position integration, no stop on master silence."""

    role = "travel"
    CHANNELS = ("M1_", "M2_")

    def reset_state(self, now: float) -> None:
        b = self.bank
        self._sync_motion()
        self.deadman = b.profile.deadman and b.has("HEARTBEAT")
        self.window_s = b.profile.deadman_window_ms / 1000.0
        self.last_heartbeat = b.get("HEARTBEAT")
        self.heartbeat_changed_at = now
        self.was_enabled = self.any_enabled()

    def _sync_motion(self) -> None:
        """Internal float speed/position from the registers (after boot or a forced value)."""
        b = self.bank
        self.velocity: dict[str, float] = {}
        self.position: dict[str, float] = {}
        for ch in self.CHANNELS:
            sign = -1.0 if b.get(ch + "DIRECTION") == 2 else 1.0
            enabled = b.get(ch + "ENABLE")
            self.velocity[ch] = sign * b.get(ch + "ACTUAL_SPEED") if enabled else 0.0
            self.position[ch] = float(b.get(ch + "POSITION_CURRENT"))

    def on_forced(self, address: int, now: float) -> None:
        self._sync_motion()
        if self.deadman:
            self._watch_heartbeat(now)
        self._update_current()

    def any_enabled(self) -> bool:
        return any(self.bank.get(ch + "ENABLE") for ch in self.CHANNELS)

    def total_speed(self) -> float:
        """Sum of |actual speed| over both channels, in %."""
        return sum(abs(v) for v in self.velocity.values())

    def reset_errors(self, now: float) -> None:
        # DRV-FW: RESET_ERROR_CMD re-initialises ALL registers (ENABLE=0, speeds 0).
        self.power_on(now)

    def on_write(self, address: int, now: float) -> None:
        b = self.bank
        for ch in self.CHANNELS:
            if self.outputs_stuck:
                break  # a welded output stage: ENABLE = 0 cuts nothing
            if address == b.address_of(ch + "ENABLE") and not b.get(ch + "ENABLE"):
                # Output cut at once in the write handler, no ramp.
                self.velocity[ch] = 0.0
                b.set(ch + "ACTUAL_SPEED", 0)
                self._update_current()
        if self.deadman:
            self._watch_heartbeat(now)
        super().on_write(address, now)

    def _watch_heartbeat(self, now: float) -> None:
        heartbeat = self.bank.get("HEARTBEAT")
        if heartbeat != self.last_heartbeat:
            self.last_heartbeat = heartbeat
            self.heartbeat_changed_at = now
        enabled = self.any_enabled()
        if enabled and not self.was_enabled:
            # Enabling starts a fresh window: a heartbeat from long ago does not trip at once.
            self.heartbeat_changed_at = now
        self.was_enabled = enabled

    def _trip_deadman(self) -> None:
        b = self.bank
        for ch in self.CHANNELS:
            b.set(ch + "ENABLE", 0)
            b.set(ch + "ACTUAL_SPEED", 0)
            self.velocity[ch] = 0.0
        b.set("SYSTEM_ERROR", b.get("SYSTEM_ERROR") | DEADMAN_TRIPPED_BIT)
        self.was_enabled = False

    def _update_current(self) -> None:
        self.bank.set("CURRENT", round(self.total_speed() * DRIVER_CURRENT_RAW_PER_PERCENT))

    def tick(self, now: float, dt: float) -> None:
        b = self.bank
        if self.deadman:
            self._watch_heartbeat(now)
            if self.was_enabled and now - self.heartbeat_changed_at >= self.window_s:
                self._trip_deadman()
        for ch in self.CHANNELS:
            v = self.velocity[ch]
            if self.outputs_stuck:
                pass  # the motor runs on at the speed it had
            elif not b.get(ch + "ENABLE"):
                v = 0.0
            else:
                direction = b.get(ch + "DIRECTION")
                target = 0.0
                if direction in (1, 2):
                    target = float(min(b.get(ch + "COMMAND_SPEED"), b.get(ch + "MAX_SPEED")))
                    if direction == 2:
                        target = -target
                if v != 0.0 and (target > 0) != (v > 0):
                    target = 0.0  # reversing: come to a stop first, then accelerate
                if abs(target) > abs(v):
                    step = b.get(ch + "MAX_ACCELERATION") * dt
                else:
                    step = b.get(ch + "MAX_DECELERATION") * dt
                if abs(target - v) <= step:
                    v = target
                else:
                    v += step if target > v else -step
            self.velocity[ch] = v
            pos = self.position[ch] + v / 100.0 * CM_PER_S_AT_FULL_SPEED * dt
            pos = min(max(pos, POSITION_MIN_CM), POSITION_MAX_CM)
            self.position[ch] = pos
            b.set(ch + "ACTUAL_SPEED", int(abs(v)))
            b.set(ch + "POSITION_CURRENT", int(pos))
        self._update_current()


class PowerFirmware(Firmware):
    """Power module: SOC drains and current rises while the travel motors run."""

    role = "power"

    def reset_state(self, now: float) -> None:
        self.soc = float(self.bank.get("BATTERY_SOC"))
        self.idle_current = self.bank.get("BATTERY_CURRENT")

    def on_forced(self, address: int, now: float) -> None:
        self.soc = float(self.bank.get("BATTERY_SOC"))
        if address == self.bank.address_of("BATTERY_CURRENT"):
            self.idle_current = self.bank.get("BATTERY_CURRENT")

    def tick(self, now: float, dt: float) -> None:
        travel = self.peers.firmware_for_role("travel")
        speed = travel.total_speed() if isinstance(travel, TravelFirmware) else 0.0
        if speed > 0.0:
            self.soc = max(0.0, self.soc - SOC_DRAIN_RAW_PER_PERCENT_S * speed * dt)
            self.bank.set("BATTERY_SOC", round(self.soc))
        self.bank.set("BATTERY_CURRENT", self.idle_current + round(speed * BATTERY_CURRENT_RAW_PER_PERCENT))


class DockFirmware(Firmware):
    """Dock & location module: static map, POSITION_X follows the travel driver's M1 position."""

    role = "dock"

    def tick(self, now: float, dt: float) -> None:
        travel = self.peers.firmware_for_role("travel")
        if isinstance(travel, TravelFirmware):
            self.bank.set("POSITION_X", travel.bank.get("M1_POSITION_CURRENT") * 10)


_BY_ROLE: dict[str, type[Firmware]] = {
    cls.role: cls for cls in (SafetyFirmware, TravelFirmware, PowerFirmware, DockFirmware)
}


def make_firmware(bank: RegisterBank, unit: int, peers: Peers) -> Firmware:
    """The firmware model for the profile's role (generic store-and-answer for unknown roles)."""
    return _BY_ROLE.get(bank.profile.role, Firmware)(bank, unit, peers)
