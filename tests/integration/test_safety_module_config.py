"""The safety module's configuration against the simulator: applied at bind, verified, reboots detected.

SAFE-FW forgets its configuration on a reboot: every sensor comes back disabled, so the module
never trips. Each claim is checked on the wire (the frames the simulator received, its registers).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.sim.client import SimProcess
from tests.conftest import wait_for
from tests.integration.test_safety import outputs, start_moving, terminal

# Asserts the carriage's timing (poll ticks, link budgets, stop latency): `make test` runs it alone.
pytestmark = pytest.mark.realtime

SAFETY = 5
ANALOG_1_ENABLE = 0x001A
DI1_ACTIVE_LEVEL = 0x002A
ZONE1 = 0x0044
CONFIG_ADDRESSES = (
    set(range(0x001A, 0x001E)) | set(range(0x0026, 0x002E)) | set(range(0x0044, 0x0048)) | {0x0049, 0x004A, 0x004B}
)
FAST_VERIFY = "[safety_module]\nverify_interval_ms = 1000\n"
NO_REAPPLY = "[safety_module]\nreapply_after_reboot = false\n"


def config_writes(sim: SimProcess, since: float) -> list[dict]:  # type: ignore[type-arg]
    return [
        w
        for w in sim.control.writes(SAFETY, since=since)
        if set(range(w["address"], w["address"] + len(w["values"]))) & CONFIG_ADDRESSES
    ]


def latched(rt) -> frozenset[str]:  # type: ignore[no-untyped-def]
    return rt.controller.supervisor.verdict.latched_codes


async def move_refused(rt, key: str) -> None:  # type: ignore[no-untyped-def]
    res = await rt.controller.submit_command(
        source="api",
        idempotency_key=key,
        type="move",
        params={"direction": "forward", "speed_pct": 20, "duration_ms": 500},
        user="t",
    )
    record = await terminal(rt, res.record.id)
    assert record.state == "failed", record


async def obstacle_trips(rt, sim: SimProcess) -> None:  # type: ignore[no-untyped-def]
    """An obstacle at 20 cm (inside zone 1 and the agent's 30 cm emergency distance) trips both."""
    sim.control.obstacle(1, 20)
    assert await wait_for(lambda: "OBSTACLE_EMERGENCY" in latched(rt), 5.0), rt.controller.supervisor.verdict
    assert await wait_for(lambda: sim.control.registers(SAFETY)[0x0000] == 2, 1.0), "the module did not trip"


async def test_configuration_is_applied_at_bind_and_read_back(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    assert sim.control.read(SAFETY, ANALOG_1_ENABLE, 4) == [0, 0, 0, 0]  # SAFE-FW power-on: all sensors off
    started = time.monotonic()
    rt = await agent_factory(sim.link, extra=FAST_VERIFY)
    assert sim.control.read(SAFETY, ANALOG_1_ENABLE, 4) == [1, 1, 1, 1]
    assert sim.control.read(SAFETY, DI1_ACTIVE_LEVEL, 4) == [1, 1, 1, 1]
    assert sim.control.read(SAFETY, 0x004A, 1) == [0]  # AUTO_RESET_ENABLE stays off
    writes = config_writes(sim, started)
    assert writes, "nothing was written to the module's configuration"
    idle_at = time.monotonic()
    assert all(w["t"] < idle_at for w in writes)
    assert rt.safety_config.verified and not latched(rt)
    # Read back continuously, on the wire: the sensor enables with every status read, the rest of
    # the configuration riding on a status read every verify interval (1 s here), no tick lost.
    await asyncio.sleep(3.2)
    reads = [r for r in sim.control.reads(SAFETY, since=idle_at) if r["address"] < 0x0100]
    assert all(r["address"] == 0x0000 and ANALOG_1_ENABLE + 4 <= r["count"] for r in reads), reads
    wide = [r for r in reads if r["address"] + r["count"] > max(CONFIG_ADDRESSES)]
    assert 2 <= len(wide) <= 4, [(round(r["t"] - idle_at, 2), r["count"]) for r in reads]
    assert len(reads) >= 3.2 / 0.1 - 3, len(reads)  # a status read on (almost) every tick, the wide ones too
    assert not config_writes(sim, idle_at)
    assert not latched(rt), rt.controller.supervisor.verdict


@pytest.mark.parametrize("boot_ms", [40, 150])
async def test_reboot_is_detected_and_reapplied_motion_waits_for_a_reset(
    sim: SimProcess, agent_factory, boot_ms: int
) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    await start_moving(rt, sim)
    rebooted = time.monotonic()
    sim.control.reboot(SAFETY, boot_ms=boot_ms)
    assert await wait_for(lambda: "SAFETY_MODULE_REBOOTED" in latched(rt), 3.0), rt.controller.supervisor.verdict
    assert "SAFETY_CONFIG_MISMATCH" in latched(rt)
    assert await wait_for(lambda: outputs(sim)["M1_ENABLE"] == 0 and outputs(sim)["M1_ACTUAL"] == 0, 2.0)
    # Re-applied on the wire, and read back before the mismatch is gone.
    assert await wait_for(lambda: sim.control.read(SAFETY, ANALOG_1_ENABLE, 4) == [1, 1, 1, 1], 3.0)
    assert config_writes(sim, rebooted)
    assert await wait_for(lambda: rt.safety_config.verified, 3.0)
    # Still latched: motion is refused until a technician resets.
    assert "SAFETY_MODULE_REBOOTED" in latched(rt)
    await move_refused(rt, "after-reboot")
    assert outputs(sim)["M1_ENABLE"] == 0
    await asyncio.sleep(0.3)
    result = await rt.controller.reset(user="tech")
    assert result.remaining == {} and result.state == "IDLE", result
    await obstacle_trips(rt, sim)


@pytest.mark.parametrize("boot_ms", [40, 150])
async def test_reboot_without_reapply_keeps_motion_refused_until_the_configuration_is_applied(
    sim: SimProcess, agent_factory, boot_ms: int
) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra=NO_REAPPLY)
    rebooted = time.monotonic()
    sim.control.reboot(SAFETY, boot_ms=boot_ms)
    assert await wait_for(lambda: {"SAFETY_MODULE_REBOOTED", "SAFETY_CONFIG_MISMATCH"} <= latched(rt), 3.0), (
        rt.controller.supervisor.verdict
    )
    assert await wait_for(lambda: rt.controller.sm.state.value == "FAULT", 1.0)
    await asyncio.sleep(1.5)  # a few more read-backs: none of them writes
    assert not config_writes(sim, rebooted)
    assert sim.control.read(SAFETY, ANALOG_1_ENABLE, 1) == [0]
    result = await rt.controller.reset(user="tech")
    assert (
        "SAFETY_CONFIG_MISMATCH" in result.remaining and "ANALOG_1_ENABLE" in result.remaining["SAFETY_CONFIG_MISMATCH"]
    )
    assert result.state == "FAULT"
    await move_refused(rt, "unconfigured")
    # The technician's fix: restart the agent, which applies the configuration at bind.
    await rt.shutdown()
    rt2 = await agent_factory(sim.link, extra=NO_REAPPLY)
    assert sim.control.read(SAFETY, ANALOG_1_ENABLE, 4) == [1, 1, 1, 1]
    assert rt2.safety_config.verified and not latched(rt2)
    await obstacle_trips(rt2, sim)


async def test_a_changed_register_latches_a_mismatch_and_is_not_overwritten(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra=FAST_VERIFY)
    forced = time.monotonic()
    sim.control.set(SAFETY, ZONE1, 10)  # zone 1 narrowed to 10 cm behind the agent's back
    assert await wait_for(lambda: "SAFETY_CONFIG_MISMATCH" in latched(rt), 3.0), rt.controller.supervisor.verdict
    fault = next(f for f in rt.controller.supervisor.verdict.faults if f.code == "SAFETY_CONFIG_MISMATCH")
    assert "SAFETY_ZONE1_THRESHOLD reads 10 (expected 30)" in fault.detail and fault.hint
    assert "SAFETY_MODULE_REBOOTED" not in latched(rt)  # not the power-on defaults: no reboot
    assert await wait_for(lambda: rt.controller.sm.state.value == "FAULT", 2.0)
    await asyncio.sleep(1.2)
    assert not config_writes(sim, forced), "the agent overwrote a register someone changed"
    result = await rt.controller.reset(user="tech")
    assert "SAFETY_CONFIG_MISMATCH" in result.remaining
    sim.control.set(SAFETY, ZONE1, 30)  # put right
    assert await wait_for(lambda: rt.safety_config.verified, 3.0)
    result = await rt.controller.reset(user="tech")
    assert result.remaining == {} and result.state == "IDLE", result
