"""The bus master against the firmware simulator on a real pty: every injected fault.

Values are compared with the simulator's ground truth (what its registers hold), never with
constants copied from a profile.
"""

from __future__ import annotations

import asyncio
import random
import time
from itertools import pairwise

import pytest

from drivers.modbus.errors import BusError, BusTimeout, ModbusExceptionReply, PortUnavailable, SlaveSetAside
from drivers.modbus.frames import read_request, write_request
from drivers.modbus.master import BusMaster
from drivers.modbus.schedule import PollPlan, Priority
from drivers.sim.client import SimProcess
from tests.conftest import wait_for

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

POWER, TRAVEL, DOCK, SAFETY = 2, 3, 4, 5


async def test_reads_and_writes_match_ground_truth(sim: SimProcess, master: BusMaster) -> None:
    truth = sim.control.registers(TRAVEL)
    regs = await master.read(TRAVEL, 0x0000, 16)
    assert list(regs) == [truth[a] for a in range(16)]
    await master.write(TRAVEL, 0x000A, [37])  # M1_MAX_ACCELERATION, FC06
    await master.write(TRAVEL, 0x0007, [120, 11, 6])  # PID gains, FC16
    assert sim.control.read(TRAVEL, 0x0007, 4) == [120, 11, 6, 37]
    writes = sim.control.writes(TRAVEL)
    assert [(w["fc"], w["address"], w["values"]) for w in writes[-2:]] == [
        (6, 0x000A, [37]),
        (16, 0x0007, [120, 11, 6]),
    ]


async def test_exception_is_decoded_and_not_retried(sim: SimProcess, master: BusMaster) -> None:
    sim.control.exception(POWER, 4)
    before = sim.control.stats()
    with pytest.raises(ModbusExceptionReply) as info:
        await master.read(POWER, 0, 4)
    assert info.value.code == "MODBUS_EXCEPTION_04" and info.value.hint
    after = sim.control.stats()
    key = str(POWER)
    assert (
        after["slaves"][key]["frames_received"] - before["slaves"][key]["frames_received"] == 1
    )  # exceptions are final
    sim.control.exception(POWER, 0)
    # An unmapped address is refused by the firmware with exception 02.
    with pytest.raises(ModbusExceptionReply) as info:
        await master.read(POWER, 0x2000, 1)
    assert info.value.exception_code == 2


async def test_silent_slave_times_out_fast_is_set_aside_and_comes_back(sim: SimProcess, master: BusMaster) -> None:
    sim.control.silence(POWER, True)
    started = time.monotonic()
    with pytest.raises(BusTimeout):
        await master.read(POWER, 0, 4)
    elapsed = time.monotonic() - started
    # deadline ~ wire + 30 ms turnaround + margin, two attempts: far from the old master's 4.4 s
    assert elapsed < 0.2, elapsed
    for _ in range(master.fail_threshold - 1):
        with pytest.raises(BusTimeout):
            await master.read(POWER, 0, 4)
    assert not master.is_online(POWER)
    with pytest.raises(SlaveSetAside):
        await master.read(POWER, 0, 4)
    # Other slaves are unaffected.
    assert len(await master.read(TRAVEL, 0, 4)) == 4
    sim.control.silence(POWER, False)
    assert await wait_for(lambda: master.is_online(POWER), 5.0), "probe did not bring the slave back"
    assert len(await master.read(POWER, 0, 4)) == 4
    assert master.links[POWER].stats.set_aside == 1


async def test_wrong_address_reply_is_never_taken(sim: SimProcess, master: BusMaster) -> None:
    sim.control.wrong_address(TRAVEL, reply_as=9)
    with pytest.raises(BusTimeout):
        await master.read(TRAVEL, 0, 4)
    assert master.links[TRAVEL].stats.mismatched == 0  # address 9 is no known slave: counted as garbage
    assert master.stats.garbage_bytes > 0
    sim.control.wrong_address(TRAVEL, reply_as=POWER)  # a reply claiming to come from another known slave
    with pytest.raises(BusTimeout):
        await master.read(TRAVEL, 0, 4)
    assert master.links[POWER].stats.mismatched >= 1
    sim.control.wrong_address(TRAVEL, reply_as=TRAVEL, rate=0)
    assert len(await master.read(TRAVEL, 0, 4)) == 4


async def test_corrupted_crc_is_retried(sim: SimProcess, master: BusMaster) -> None:
    sim.control.corrupt_crc(TRAVEL, 1.0)
    with pytest.raises(BusError) as info:
        await master.read(TRAVEL, 0, 4)
    assert info.value.code == "BUS_CRC_ERROR"
    assert master.links[TRAVEL].stats.crc_errors == 2  # first attempt plus one retry
    sim.control.corrupt_crc(TRAVEL, 0.0)
    truth = sim.control.read(TRAVEL, 0, 4)
    assert list(await master.read(TRAVEL, 0, 4)) == truth


async def test_reboot_restores_defaults(sim: SimProcess, master: BusMaster, profiles) -> None:  # type: ignore[no-untyped-def]
    reg = profiles["travel-drvfw"].register("M1_MAX_ACCELERATION")
    await master.write(TRAVEL, reg.address, [77])
    sim.control.reboot(TRAVEL, boot_ms=100)
    await asyncio.sleep(0.2)
    assert (await master.read(TRAVEL, reg.address, 1))[0] == reg.default


async def test_late_replies_and_crc_errors_never_give_wrong_values(sim: SimProcess, master: BusMaster) -> None:
    """5 % of replies arrive after the master gave up, 2 % are corrupted: 0 wrong values in 2,000+ reads.

    Reads alternate between blocks of the same size, so a late reply to one block taken as the
    answer to the next would show up as a value that differs from the ground truth.
    """
    blocks = [(POWER, 0x0014, 4), (POWER, 0x0018, 4), (POWER, 0x0030, 4), (TRAVEL, 0x0007, 3), (TRAVEL, 0x0017, 3)]
    truth: dict[tuple[int, int], int] = {}
    for slave, start, count in blocks:
        for i in range(count):
            value = 1000 * slave + start + i  # unique per register
            sim.control.set(slave, start + i, value)
            truth[(slave, start + i)] = value
    sim.control.delay(None, ms=60, rate=0.05)  # power/travel deadlines are ~35 ms: these replies come late
    sim.control.corrupt_crc(None, 0.02)
    rng = random.Random(5)
    wrong = answered = failed = 0
    for _ in range(2200):
        slave, start, count = rng.choice(blocks)
        try:
            regs = await master.execute(read_request(slave, start, count), Priority.TELEMETRY)
        except (BusTimeout, BusError):
            failed += 1
            if not master.is_online(slave):
                assert await wait_for(lambda slave=slave: master.is_online(slave), 5.0)
            continue
        answered += 1
        wrong += sum(1 for i, v in enumerate(regs) if v != truth[(slave, start + i)])
    sim.control.faults_clear()
    late = sum(master.links[s].stats.late_dropped for s in (POWER, TRAVEL))
    fences = sum(master.links[s].stats.fences for s in (POWER, TRAVEL))
    assert wrong == 0
    assert answered >= 2000, (answered, failed)
    assert late > 20 and fences > 0, (late, fences)  # the scenario really produced late replies


async def test_port_vanishes_and_returns(sim: SimProcess, master: BusMaster) -> None:
    results: list[float] = []
    plan = PollPlan(
        key="travel:fast:0000",
        request=read_request(TRAVEL, 0, 8),
        interval_s=0.05,
        on_result=lambda regs, at: results.append(at),
    )
    master.schedule.add(plan, time.monotonic())
    assert await wait_for(lambda: len(results) >= 3, 2.0)
    sim.control.line(False)
    assert await wait_for(lambda: not master.port_up, 2.0), "port loss not noticed"
    with pytest.raises(PortUnavailable):
        await master.read(TRAVEL, 0, 1)
    await asyncio.sleep(0.5)
    count_down = len(results)
    sim.control.line(True)
    back = time.monotonic()
    assert await wait_for(lambda: len(results) > count_down, 2.0), "polling did not resume within 2 s"
    assert time.monotonic() - back < 2.0
    assert master.stats.port_losses == 1 and master.stats.reconnects >= 2


async def test_port_missing_at_start_is_retried(tmp_path, sim_factory, profiles) -> None:  # type: ignore[no-untyped-def]
    link = str(tmp_path / "late.tty")
    master = BusMaster(link)
    await master.start()
    try:
        await asyncio.sleep(0.3)
        assert not master.port_up  # pyserial/pymodbus would have given up here
        sim_factory("late")
        assert await wait_for(lambda: master.port_up, 3.0)
        assert len(await master.read(TRAVEL, 0x0100, 10)) == 10
    finally:
        await master.close()


async def test_dead_slave_barely_stretches_healthy_polls(sim: SimProcess, master: BusMaster) -> None:
    """A silent module is probed only in idle gaps: healthy poll periods stay within 10 %."""
    now = time.monotonic()
    plans = {}
    for key, slave, interval in (("power", POWER, 0.1), ("travel", TRAVEL, 0.1), ("dock", DOCK, 0.1)):
        plans[key] = PollPlan(
            key=f"{key}:fast",
            request=read_request(slave, 0, 4) if slave != DOCK else read_request(slave, 0x30, 3),
            interval_s=interval,
            phase_s=0.01 * len(plans),
        )
        master.schedule.add(plans[key], now)
    sim.control.silence(DOCK, True)
    assert await wait_for(lambda: not master.is_online(DOCK), 3.0)
    for plan in plans.values():
        plan.periods.clear()
    await asyncio.sleep(4.0)
    for key in ("power", "travel"):
        periods = plans[key].periods
        assert len(periods) >= 30
        mean = sum(periods) / len(periods)
        assert mean <= 0.1 * 1.10, (key, mean)
    assert master.links[DOCK].stats.timeouts >= master.fail_threshold + 1  # it was really probed


async def test_safety_polls_are_phase_locked_to_the_service_tick(sim: SimProcess, master: BusMaster) -> None:
    """SAFE-FW answers only every 100 ms; aligned polls hold the bus for a few ms, not up to 100."""
    results: list[float] = []
    plan = PollPlan(
        key="safety:fast",
        request=read_request(SAFETY, 0, 6),
        interval_s=0.05,
        priority=Priority.SAFETY,
        service_period_s=0.1,
        on_result=lambda regs, at: results.append(at),
    )
    master.schedule.add(plan, time.monotonic())
    await asyncio.sleep(3.0)
    assert len(results) >= 20  # one reply per 100 ms tick at best; the round trips below prove the lock
    rtts = sorted(list(master.links[SAFETY].stats.rtt_window)[5:])
    median = rtts[len(rtts) // 2]
    assert median < 0.015, f"median safety transaction {median * 1000:.1f} ms: not aligned to the tick"
    gaps = [b - a for a, b in pairwise(results[5:])]
    assert max(gaps) < 0.25 and sum(gaps) / len(gaps) < 0.12
    # Hardly any poll was answered a tick late, and the counter says how many were.
    link = master.links[SAFETY].stats
    assert link.missed_ticks <= 3, link.missed_ticks
    assert master.link_summary(SAFETY)["missed_ticks"] == link.missed_ticks


async def test_polls_answered_a_tick_late_are_counted(sim: SimProcess, master: BusMaster) -> None:
    """The module's tick stops matching the 100 ms grid the polls are locked to (its period is
    170 ms now): polls that reach it too late for a tick are answered one tick later, counted."""
    plan = PollPlan(
        key="safety:fast",
        request=read_request(SAFETY, 0, 6),
        interval_s=0.05,
        priority=Priority.SAFETY,
        service_period_s=0.1,
    )
    master.schedule.add(plan, time.monotonic())
    await asyncio.sleep(1.0)
    before = master.links[SAFETY].stats.missed_ticks
    sim.control.service_period(SAFETY, 170)
    await asyncio.sleep(2.0)
    assert master.links[SAFETY].stats.missed_ticks - before >= 5, master.link_summary(SAFETY)


async def test_stop_jumps_the_queue(sim: SimProcess, master: BusMaster) -> None:
    """With 50 telemetry reads queued (5 ms each, 250 ms in all), a stop write goes out after the one on the wire."""
    sim.control.service_period(TRAVEL, 0)
    sim.control.service_period(POWER, 5)
    tasks = [asyncio.create_task(master.execute(read_request(POWER, 0, 10), Priority.TELEMETRY)) for _ in range(50)]
    await asyncio.sleep(0.002)
    t0 = time.monotonic()
    await master.execute(write_request(TRAVEL, 0x0001, [0, 0]), Priority.HALT)
    stop_done = time.monotonic() - t0
    await asyncio.gather(*tasks)
    reads_done = time.monotonic() - t0
    assert reads_done > 0.2  # the queue really was long
    assert stop_done < 0.05, f"stop took {stop_done * 1000:.1f} ms behind 50 queued reads"


@pytest.mark.parametrize(("priority", "abandoned"), [(Priority.STOP, True), (Priority.HALT, False)])
async def test_only_an_urgent_stop_abandons_an_overdue_read(
    sim: SimProcess, master: BusMaster, priority: Priority, abandoned: bool
) -> None:
    """A read the safety module answers late (80 ms here) is abandoned for an E-stop, never for a
    routine stop: that one waits for the reply, so the safety link keeps its polls."""
    sim.control.service_period(TRAVEL, 0)
    sim.control.service_period(SAFETY, 0)
    sim.control.delay(SAFETY, 80)
    read = asyncio.create_task(master.execute(read_request(SAFETY, 0, 6), Priority.SAFETY, retries=0))
    await asyncio.sleep(0.03)
    assert not read.done() and master.on_wire is not None and master.on_wire.slave == SAFETY
    t0 = time.monotonic()
    await master.execute(write_request(TRAVEL, 0x0001, [0, 0]), priority)
    stop_took = time.monotonic() - t0
    outcome = (await asyncio.gather(read, return_exceptions=True))[0]
    if abandoned:
        assert isinstance(outcome, BusError) and master.links[SAFETY].stats.preempted == 1
        assert stop_took < 0.04, f"urgent stop waited {stop_took * 1000:.1f} ms"
    else:
        assert isinstance(outcome, tuple) and len(outcome) == 6
        assert master.links[SAFETY].stats.preempted == 0
        assert stop_took >= 0.03, "the routine stop went out before the read it had to wait for"


async def test_a_flood_of_routine_stops_leaves_the_safety_polls_their_ticks(sim: SimProcess, master: BusMaster) -> None:
    """Stop commands stream in (a write and a read-back to the travel driver, back to back, for
    3 s) while the safety module is polled on its 100 ms tick: no safety poll is abandoned, none
    fails, and no gap between safety replies comes near the 250 ms link budget."""
    replies: list[float] = []
    failures: list[Exception] = []
    plan = PollPlan(
        key="safety:fast", request=read_request(SAFETY, 0, 6), interval_s=0.05, priority=Priority.SAFETY,
        service_period_s=0.1, on_result=lambda regs, at: replies.append(at),
        on_error=lambda exc, at: failures.append(exc),
    )  # fmt: skip
    master.schedule.add(plan, time.monotonic())
    await asyncio.sleep(0.5)

    async def routine_stops() -> int:
        count = 0
        ends = time.monotonic() + 3.0
        while time.monotonic() < ends:
            await master.execute(write_request(TRAVEL, 0x0001, [0, 0]), Priority.HALT)
            await master.execute(read_request(TRAVEL, 0x0001, 2), Priority.HALT)
            count += 1
        return count

    start = len(replies)
    stops = await asyncio.gather(*(routine_stops() for _ in range(3)))
    assert sum(stops) > 100  # the bus really was kept busy with stops
    window = replies[start:]
    gaps = [b - a for a, b in pairwise(window)]
    assert len(window) >= 20 and not failures
    assert master.links[SAFETY].stats.preempted == 0
    assert max(gaps) < 0.21, f"largest gap between safety replies {max(gaps) * 1000:.0f} ms"


async def test_no_exception_escapes_the_bus_task_under_every_fault(sim: SimProcess, master: BusMaster) -> None:
    sim.control.corrupt_crc(None, 0.3)
    sim.control.delay(None, ms=80, rate=0.2)
    sim.control.exception(DOCK, 1)
    sim.control.wrong_address(POWER, reply_as=TRAVEL, rate=0.3)
    calls = [master.read(s, 0x0100, 10) for s in (POWER, TRAVEL, DOCK) for _ in range(15)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, (tuple, BusError)) for o in outcomes), [
        o for o in outcomes if not isinstance(o, (tuple, BusError))
    ]
    sim.control.line(False)
    await asyncio.sleep(0.2)
    sim.control.line(True)
    sim.control.faults_clear()
    assert await wait_for(lambda: master.port_up, 3.0)
    for s in (POWER, TRAVEL, DOCK):
        await wait_for(lambda s=s: master.is_online(s), 5.0)
    assert len(await master.read(TRAVEL, 0x0100, 10)) == 10
    assert master.task is not None and not master.task.done()
