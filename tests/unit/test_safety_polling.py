"""Poll plans of the safety module: what is read on every tick, how long it counts as fresh, and
that its configuration is read at bind instead of half a minute later."""

from __future__ import annotations

import time
from pathlib import Path

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
    poller = ModulePoller(master, SnapshotBoard(), Binding("safety", 5, SAFETY), interval_s=0.05, slow_interval_s=30.0)
    poller.install()
    return master, poller


def test_status_distances_enables_and_inputs_are_one_read() -> None:
    blocks = plan_poll(SAFETY, "fast")
    assert len(blocks) == 1, blocks
    start, count = blocks[0]
    covered = set(range(start, start + count))
    for name in ("SAFETY_SYSTEM_STATUS", "EMERGENCY_STOP_STATUS", "RESET_FLAG", *(f"ANALOG_INPUT_{i}" for i in range(1, 5)),
                 *(f"ANALOG_{i}_ENABLE" for i in range(1, 5)), *(f"DI{i}_STATUS" for i in range(1, 5))):
        assert SAFETY.register(name).address in covered, name
        assert name in SAFETY.poll_names("fast"), name


def test_the_fast_read_gets_every_tick_and_is_fresh_for_two_ticks_plus_a_transaction(tmp_path: Path) -> None:
    master, poller = safety_poller(tmp_path)
    fast = [p for p in master.schedule if p.key.startswith("safety:fast:")]
    assert len(fast) == 1 and fast[0].interval_s <= TICK and not fast[0].background
    assert poller.max_age_s(fast[0].interval_s) <= 2 * TICK + 0.06


def test_configuration_and_identity_are_read_at_bind(tmp_path: Path) -> None:
    before = time.monotonic()
    master, poller = safety_poller(tmp_path)
    rare = [p for p in master.schedule if not p.key.startswith("safety:fast:")]
    assert rare
    for plan in rare:
        # on its first free tick (the slave's tick is not known yet: at once), not on the 30 s grid
        assert plan.next_due - before < 3 * TICK, (plan.key, plan.next_due - before)


def test_not_ready_until_the_configuration_was_read(tmp_path: Path) -> None:
    master, poller = safety_poller(tmp_path)
    now = time.monotonic()
    assert poller.fast_quality(now) is Quality.MISSING
    # The safety module's configuration (enables, thresholds, modes) is part of its status read:
    # the one read makes the role fresh, and it holds every configuration register.
    fast_start, fast_count = plan_poll(SAFETY, "fast")[0]
    poller._result_handler(fast_start, f"safety:fast:{fast_start:04x}")(tuple([1] * fast_count), now)
    for name in ("ANALOG_1_ENABLE", "SAFETY_ZONE1_THRESHOLD", "AUTO_RESET_ENABLE", "SAFETY_MODE"):
        assert poller.snapshot.quality(name, now) is Quality.FRESH
    for start, count in plan_poll(SAFETY, "slow"):
        poller._result_handler(start, f"safety:slow:{start:04x}")(tuple([1] * count), now)
    assert poller.fast_quality(now) is Quality.FRESH
