"""Firmware behaviour seen over the bus: safety latch and service period, travel, dead-man, power."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from drivers.sim.client import SimProcess
from drivers.sim.crc import crc_ok
from tests.integration.test_sim_support import (  # noqa: F401  (fixtures)
    RtuPort,
    make_sim,
    port,
    read_frame,
    sim,
    wait_for,
)

SAFETY, TRAVEL, POWER, DOCK = 5, 3, 2, 4
STATUS, ESTOP, RESET_FLAG, RELAY1 = 0x0000, 0x0001, 0x0004, 0x0040


def safety(port: RtuPort) -> tuple[int, int, int, int]:
    status, estop = port.read(SAFETY, STATUS, 2)
    return status, estop, port.read(SAFETY, RESET_FLAG)[0], port.read(SAFETY, RELAY1)[0]


def test_estop_latch_and_rearm_over_the_bus(sim: SimProcess, port: RtuPort) -> None:
    sim.control.service_period(SAFETY, 0)  # latch logic only; latency is tested below
    assert safety(port) == (0, 0, 0, 0)
    sim.control.estop(True)
    assert safety(port) == (2, 1, 1, 1)
    port.write(SAFETY, RESET_FLAG, 0)  # re-arm while still pressed: latches again at once
    assert safety(port) == (2, 1, 1, 1)
    sim.control.estop(False)
    time.sleep(0.05)
    assert safety(port) == (2, 0, 1, 1)  # released, but the latch holds until re-armed
    port.write(SAFETY, RESET_FLAG, 0)
    assert safety(port) == (0, 0, 0, 0)


def test_obstacle_zones_over_the_bus(sim: SimProcess, port: RtuPort) -> None:
    sim.control.service_period(SAFETY, 0)
    sim.control.obstacle(1, 25)  # sensor disabled: ignored
    time.sleep(0.03)
    assert safety(port)[0] == 0
    port.write(SAFETY, 0x001A, 1)  # ANALOG_1_ENABLE
    sim.control.obstacle(1, 55)
    time.sleep(0.03)
    assert safety(port) == (1, 0, 0, 0)  # warning: relay untouched
    sim.control.obstacle(1, 25)
    time.sleep(0.03)
    assert safety(port) == (2, 0, 1, 1)
    sim.control.obstacle(1, 500)
    port.write(SAFETY, RESET_FLAG, 0)
    assert safety(port) == (0, 0, 0, 0)
    sim.control.set_di(SAFETY, 2, 1)
    port.write(SAFETY, 0x002B, 1)  # DI2_ACTIVE_LEVEL = 1
    port.write(SAFETY, 0x0027, 1)  # DI2_ENABLE
    time.sleep(0.03)
    assert safety(port)[0] == 2


def test_safety_service_period_delays_replies_up_to_100_ms(sim: SimProcess, port: RtuPort) -> None:
    rng = random.Random(3)
    latencies = []
    frame = read_frame(SAFETY, STATUS, 1)
    for _ in range(16):
        time.sleep(rng.uniform(0.0, 0.1))  # land at random points of the firmware's cycle
        reply, elapsed = port.transact(frame, timeout=0.5)
        assert reply is not None and crc_ok(reply)
        latencies.append(elapsed)
    assert max(latencies) <= 0.115, latencies
    assert min(latencies) < 0.05 and max(latencies) > 0.06, latencies  # spread over the period
    sim.control.service_period(SAFETY, 0)
    _, elapsed = port.transact(frame)
    assert elapsed < 0.01


def test_travel_ramp_and_enable_cut_over_the_bus(sim: SimProcess, port: RtuPort) -> None:
    port.write(TRAVEL, 0x000A, 100)  # M1_MAX_ACCELERATION %/s
    port.write(TRAVEL, 0x0002, 60)  # M1_COMMAND_SPEED
    port.write(TRAVEL, 0x0004, 1)  # M1_DIRECTION forward
    port.write(TRAVEL, 0x0001, 1)  # M1_ENABLE
    t0 = time.monotonic()
    time.sleep(0.3)
    speed = port.read(TRAVEL, 0x0003)[0]
    ramp = (time.monotonic() - t0) * 100
    assert ramp - 15 <= speed <= ramp + 2, (speed, ramp)  # rising at ~100 %/s, not a step
    wait_for(lambda: port.read(TRAVEL, 0x0003)[0] == 60, timeout=2.0)
    assert port.read(TRAVEL, 0x0025)[0] > 0  # CURRENT
    assert port.read(TRAVEL, 0x000E)[0] > 0  # M1_POSITION_CURRENT advances
    port.write(TRAVEL, 0x0001, 0)
    assert port.read(TRAVEL, 0x0003)[0] == 0  # cut at once, no deceleration ramp


def test_travel_keeps_going_when_the_master_is_silent_and_reset_reinitialises(sim: SimProcess, port: RtuPort) -> None:
    port.write_many(TRAVEL, 0x000A, [10_000, 10_000])  # accel, decel
    port.write(TRAVEL, 0x0002, 40)
    port.write(TRAVEL, 0x0004, 1)
    port.write(TRAVEL, 0x0001, 1)
    time.sleep(0.6)  # no traffic at all
    assert sim.control.read(TRAVEL, 0x0001, 3) == [1, 40, 40]
    port.write(TRAVEL, 0x0109, 1)  # RESET_ERROR_CMD: DRV-FW re-initialises every register
    assert port.read(TRAVEL, 0x0001, 4) == [0, 0, 0, 0]
    assert port.read(TRAVEL, 0x000A, 2) == [5, 4]
    assert port.read(TRAVEL, 0x0100) == [TRAVEL]


def test_deadman_variant_trips_within_its_window(make_sim: Callable[..., SimProcess]) -> None:
    sim = make_sim(slaves=["3:travel-drvfw-deadman"])
    port = RtuPort(sim.link)
    try:
        assert port.read(TRAVEL, 0x0105) == [0x0200]
        port.write_many(TRAVEL, 0x000A, [10_000, 10_000])
        port.write(TRAVEL, 0x0002, 50)
        port.write(TRAVEL, 0x0004, 1)
        port.write(TRAVEL, 0x0001, 1)
        for beat in range(1, 9):  # 400 ms of heartbeats every 50 ms: keeps running
            port.write(TRAVEL, 0x00F0, beat)
            time.sleep(0.05)
        assert sim.control.read(TRAVEL, 0x0001) == [1]
        port.write(TRAVEL, 0x00F0, 100)
        last_beat = time.monotonic()
        tripped = wait_for(
            lambda: sim.control.read(TRAVEL, 0x0001) == [0] and time.monotonic(), timeout=1.0, interval=0.005
        )
        assert 0.29 <= tripped - last_beat <= 0.40  # window 300 ms, 10 ms firmware tick
        assert port.read(TRAVEL, 0x0003) == [0]
        assert port.read(TRAVEL, 0x0108)[0] & 0x0100
    finally:
        port.close()


def test_battery_drains_while_driving_and_dock_follows(sim: SimProcess, port: RtuPort) -> None:
    soc0 = port.read(POWER, 0x0002)[0]
    for base in (0x0000, 0x0010):  # both channels at 100 %
        port.write_many(TRAVEL, base + 0x000A, [10_000, 10_000])
        port.write(TRAVEL, base + 0x0002, 100)
        port.write(TRAVEL, base + 0x0004, 1)
        port.write(TRAVEL, base + 0x0001, 1)
    time.sleep(1.5)
    current = port.read(POWER, 0x0001)[0]
    drained = soc0 - port.read(POWER, 0x0002)[0]
    assert current == 200  # 10.0 A per 100 %, two channels
    assert 2 <= drained <= 4, drained  # 0.2 % SOC per second at 2 x 100 % for ~1.5 s
    m1 = port.read(TRAVEL, 0x000E)[0]
    dock = port.read(DOCK, 0x0030)[0]
    assert m1 > 50 and abs(dock - m1 * 10) <= 10  # POSITION_X in mm follows M1 in cm
    port.write(TRAVEL, 0x0001, 0)
    port.write(TRAVEL, 0x0011, 0)
    time.sleep(0.03)
    assert port.read(POWER, 0x0001) == [0]
