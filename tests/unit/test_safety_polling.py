"""Poll plans of the safety module: what is read on every tick, how long it counts as fresh, that
its configuration is read at bind instead of half a minute later, and that the configuration
rides on the status read every configuration interval instead of taking a tick of its own."""

from __future__ import annotations

import time
from pathlib import Path

from drivers.modbus.frames import read_request
from drivers.modbus.master import BusMaster
from drivers.modbus.merge import plan_poll
from drivers.polling import Binding, ModulePoller
from drivers.profiles import load_profiles
from drivers.snapshots import Quality, SnapshotBoard

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
SAFETY = PROFILES["safety-safefw"]
TICK = SAFETY.service_period_ms / 1000


def safety_poller(tmp_path: Path) -> tuple[BusMaster, ModulePoller]:
    master = BusMaster(str(tmp_path / "no-such-port"))
    poller = ModulePoller(
        master,
        SnapshotBoard(),
        Binding("safety", 5, SAFETY),
        interval_s=0.05,
        slow_interval_s=30.0,
        config_interval_s=5.0,
    )
    poller.install()
    return master, poller


def test_status_distances_and_enables_are_one_short_read() -> None:
    blocks = plan_poll(SAFETY, "fast")
    assert len(blocks) == 1, blocks
    start, count = blocks[0]
    covered = set(range(start, start + count))
    for name in (
        "SAFETY_SYSTEM_STATUS",
        "EMERGENCY_STOP_STATUS",
        "RESET_FLAG",
        *(f"ANALOG_INPUT_{i}" for i in range(1, 5)),
        *(f"ANALOG_{i}_ENABLE" for i in range(1, 5)),
    ):
        assert SAFETY.register(name).address in covered, name
        assert name in SAFETY.poll_names("fast"), name
    # A stop to the driver waits for the reply on the wire: the every-tick read stays short.
    assert count <= 32


def fast_plan(master: BusMaster):  # type: ignore[no-untyped-def]
    (plan,) = [p for p in master.schedule if p.key.startswith("safety:fast:")]
    return plan


def test_the_configuration_rides_on_the_status_read_and_takes_no_tick(tmp_path: Path) -> None:
    master, poller = safety_poller(tmp_path)
    assert poller.config_rides
    assert not [p for p in master.schedule if p.key.startswith("safety:config:")]
    plan = fast_plan(master)
    narrow = plan_poll(SAFETY, "fast")[0]
    config = plan_poll(SAFETY, "config")[0]
    # The first read at bind is the wide one: status and configuration together.
    assert (plan.request.address, plan.request.count) == (narrow[0], config[0] + config[1] - narrow[0])
    now = time.monotonic()
    plan.on_result(tuple([1] * plan.request.count), now)
    assert poller.snapshot.quality("SAFETY_ZONE1_THRESHOLD", now) is Quality.FRESH
    assert (plan.request.address, plan.request.count) == narrow  # then the short read, tick after tick
    plan.on_result(tuple([0] * narrow[1]), now + 0.1)
    assert plan.request.count == narrow[1]
    # The configuration stays fresh between its reads, the status only for two ticks.
    later = now + 5.0
    assert poller.snapshot.quality("SAFETY_ZONE1_THRESHOLD", later) is Quality.FRESH
    assert poller.snapshot.quality("SAFETY_SYSTEM_STATUS", later) is not Quality.FRESH
    # Once the configuration interval has passed, the next read is wide again.
    plan.on_result(tuple([0] * narrow[1]), now + 5.05)
    assert plan.request.count == narrow[1] + config[1]
    plan.on_result(tuple([7] * plan.request.count), now + 5.15)
    assert poller.snapshot.readings["SAFETY_ZONE1_THRESHOLD"].value == 7
    assert plan.request.count == narrow[1]
    # Asked for (after a write, a difference found): wide at the next tick.
    poller.refresh_config()
    assert plan.request.count == narrow[1] + config[1]


def test_the_fast_read_gets_every_tick_and_is_fresh_for_two_ticks_plus_a_transaction(tmp_path: Path) -> None:
    master, poller = safety_poller(tmp_path)
    fast = [p for p in master.schedule if p.key.startswith("safety:fast:")]
    assert len(fast) == 1 and fast[0].interval_s <= TICK and not fast[0].background
    assert poller.max_age_s(fast[0].interval_s) <= 2 * TICK + 0.06


def test_configuration_and_identity_are_read_at_bind(tmp_path: Path) -> None:
    before = time.monotonic()
    master, _ = safety_poller(tmp_path)
    rare = [p for p in master.schedule if not p.key.startswith("safety:fast:")]
    assert rare
    for plan in rare:
        # on its first free tick (the slave's tick is not known yet: at once), not on the 30 s grid
        assert plan.next_due - before < 3 * TICK, (plan.key, plan.next_due - before)


def test_not_ready_until_the_configuration_was_read(tmp_path: Path) -> None:
    master, poller = safety_poller(tmp_path)
    now = time.monotonic()
    assert poller.fast_quality(now) is Quality.MISSING
    plan = fast_plan(master)
    narrow = plan_poll(SAFETY, "fast")[0]
    # A short read alone does not make the role ready: its configuration was never seen.
    poller._result_handler(narrow[0], plan.key)(tuple([1] * narrow[1]), now)
    assert poller.snapshot.quality("ANALOG_1_ENABLE", now) is Quality.FRESH
    assert poller.fast_quality(now) is Quality.MISSING
    plan.request = read_request(5, narrow[0], narrow[1] + plan_poll(SAFETY, "config")[0][1])
    plan.on_result(tuple([1] * plan.request.count), now)
    for name in ("ANALOG_1_ENABLE", "SAFETY_ZONE1_THRESHOLD", "AUTO_RESET_ENABLE", "SAFETY_MODE"):
        assert poller.snapshot.quality(name, now) is Quality.FRESH
    for start, count in plan_poll(SAFETY, "slow"):
        poller._result_handler(start, f"safety:slow:{start:04x}")(tuple([1] * count), now)
    assert poller.fast_quality(now) is Quality.FRESH
