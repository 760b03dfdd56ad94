"""The real Supervisor on synthetic safety-module snapshots: liveness and freshness per critical block.

The safety link is alive only while its status block answers; other blocks answering must not hide
a dead status block, and a stale status, distance or sensor-enable reading is a fault, never a value
that is quietly left out of the decision.
"""

from __future__ import annotations

from types import MappingProxyType

from agent.safety.faults import CATALOGUE, Level
from agent.safety.policy import SafetyPolicy
from agent.safety.supervisor import RoleLiveness, Supervisor
from drivers.snapshots import ModuleSnapshot, Reading

STATUS = ("SAFETY_SYSTEM_STATUS", "EMERGENCY_STOP_STATUS", "RESET_FLAG")
DISTANCES = tuple(f"ANALOG_INPUT_{i}" for i in range(1, 5))
ENABLES = tuple(f"ANALOG_{i}_ENABLE" for i in range(1, 5))
MAX_AGE = 0.25  # two 100 ms ticks plus one transaction
T0 = 1000.0


class Bench:
    """A safety module whose register groups answer (or not) at times the test chooses."""

    def __init__(self) -> None:
        self.now = T0
        self.at: dict[str, float] = {}
        self.values: dict[str, float] = {name: 0 for name in STATUS}
        self.values.update({name: 500 for name in DISTANCES})
        self.values.update({name: 1 for name in ENABLES})
        self.values["DI1_STATUS"] = 0
        self.trips: list[str] = []
        self.bound_at = T0 - 10.0
        self.configured_at: float | None = None  # the safety role's RoleLiveness.settled_at
        self.sup = Supervisor(
            SafetyPolicy(),
            self.liveness,
            port_up=lambda: True,
            on_trip=lambda code, detail: self.trips.append(code),
            clock=lambda: self.now,
        )

    def answer(self, names: tuple[str, ...] | list[str]) -> None:
        for name in names:
            self.at[name] = self.now

    def liveness(self, role: str) -> RoleLiveness | None:
        if role != "safety":
            return None
        readings = {n: Reading(self.values[n], at, MAX_AGE) for n, at in self.at.items()}
        snap = ModuleSnapshot("safety", 5, "safety-safefw", MappingProxyType(readings), True, None, self.now)
        return RoleLiveness(snap, self.bound_at, 0.05, 0.15, settled_at=self.configured_at)

    def run(self, until: float, every: float, names: tuple[str, ...] | list[str]) -> float | None:
        """Advance in 10 ms steps, `names` answering every `every` s; the time SAFETY_LINK_LOST first showed."""
        seen = None
        next_answer = self.now
        while self.now < until:
            self.now = round(self.now + 0.01, 6)
            if names and self.now >= next_answer - 1e-9:
                self.answer(names)
                next_answer = self.now + every
            if seen is None and self.sup.evaluate().has("SAFETY_LINK_LOST"):
                seen = self.now
        return seen


def test_other_blocks_answering_do_not_keep_the_safety_link_alive() -> None:
    bench = Bench()
    everything = STATUS + DISTANCES + ENABLES
    bench.run(T0 + 1.0, 0.1, everything)
    assert bench.sup.evaluate().level is Level.OK
    silent_from = bench.now
    # the status block stops answering; distances, enables and inputs go on every 100 ms
    lost_at = bench.run(silent_from + 1.5, 0.1, DISTANCES + ENABLES + ("DI1_STATUS",))
    assert lost_at is not None, "a dead status block was never reported"
    budget = SafetyPolicy().safety_link_budget_ms / 1000
    assert lost_at - silent_from <= budget + 0.1 + 0.011, f"link loss seen {1000 * (lost_at - silent_from):.0f} ms late"


def test_a_stale_status_reading_is_an_emergency_fault_not_dropped() -> None:
    bench = Bench()
    bench.run(T0 + 1.0, 0.1, STATUS + DISTANCES + ENABLES)
    bench.values["SAFETY_SYSTEM_STATUS"] = 0
    bench.now += MAX_AGE + 0.01  # nothing answered since: the status values are stale
    bench.answer(DISTANCES + ENABLES)
    verdict = bench.sup.evaluate()
    assert verdict.has("SAFETY_DATA_STALE"), verdict.as_dict()
    assert CATALOGUE["SAFETY_DATA_STALE"].level is Level.EMERGENCY_STOP
    assert "SAFETY_DATA_STALE" in bench.trips


def test_a_stale_distance_of_an_enabled_sensor_is_a_fault() -> None:
    bench = Bench()
    bench.run(T0 + 1.0, 0.1, STATUS + DISTANCES + ENABLES)
    bench.now += MAX_AGE + 0.01
    bench.answer(STATUS + ENABLES)  # distances stop coming
    verdict = bench.sup.evaluate()
    assert verdict.has("SAFETY_DATA_STALE"), verdict.as_dict()


def test_unknown_sensor_enables_refuse_motion_instead_of_meaning_no_sensor() -> None:
    bench = Bench()
    # the status and distances answer, the enable flags were never read: an obstacle at 20 cm
    bench.values["ANALOG_INPUT_1"] = 20
    bench.run(T0 + 1.0, 0.1, STATUS + DISTANCES)
    verdict = bench.sup.evaluate()
    assert verdict.has("SAFETY_SENSORS_UNKNOWN"), verdict.as_dict()
    assert verdict.level >= Level.PROTECTIVE_STOP and verdict.speed_factor == 0.0


def test_fresh_complete_readings_give_no_fault_and_obstacles_count() -> None:
    bench = Bench()
    bench.run(T0 + 1.0, 0.1, STATUS + DISTANCES + ENABLES)
    assert bench.sup.evaluate().level is Level.OK
    bench.values["ANALOG_INPUT_2"] = 20
    bench.answer(STATUS + DISTANCES + ENABLES)
    assert bench.sup.evaluate().has("OBSTACLE_EMERGENCY")


def test_the_link_deadline_is_when_the_status_block_budget_runs_out() -> None:
    """The controller re-evaluates at `link_deadline()`: just before it the link counts as alive, just
    after it SAFETY_LINK_LOST is raised, whatever other blocks answered in between."""
    bench = Bench()
    everything = STATUS + DISTANCES + ENABLES
    bench.run(T0 + 1.0, 0.1, everything)
    last_status = min(bench.at[name] for name in STATUS)
    budget = SafetyPolicy().safety_link_budget_ms / 1000
    due = bench.sup.link_deadline()
    assert due is not None and abs(due - (last_status + budget)) < 1e-9
    bench.now = due - 0.001
    bench.answer(DISTANCES)  # other blocks answering do not move the deadline
    assert bench.sup.link_deadline() == due
    assert not bench.sup.evaluate().has("SAFETY_LINK_LOST")
    bench.now = due + 0.001
    assert bench.sup.evaluate().has("SAFETY_LINK_LOST")
    assert "SAFETY_LINK_LOST" in bench.trips
    bench.answer(STATUS)  # the status block answers again: the deadline moves with it
    assert bench.sup.link_deadline() == bench.now + budget


def test_the_configuration_at_bind_holds_the_status_budget_until_verified_but_not_longer() -> None:
    """Writing and reading back the module's configuration takes its service ticks after bind:
    the status budget starts once it is verified (no motion is allowed before), at the latest
    BIND_CONFIG_GRACE_S after bind."""
    bench = Bench()
    bench.bound_at = T0
    bench.configured_at = float("inf")  # not verified yet
    bench.run(T0 + 0.3, 0.1, STATUS + DISTANCES + ENABLES)
    # the configuration's frames take the ticks: no status reply for 0.9 s
    assert bench.run(T0 + 1.2, 0.1, ()) is None, "a link loss while the configuration was written"
    bench.configured_at = bench.now  # verified now; the polls come back
    assert bench.run(bench.now + 1.0, 0.1, STATUS + DISTANCES + ENABLES) is None
    assert bench.sup.evaluate().level is Level.OK

    # a module that stays silent while never verified is still lost, BIND_CONFIG_GRACE_S after bind
    silent = Bench()
    silent.bound_at, silent.configured_at = T0, float("inf")
    lost_at = silent.run(T0 + 5.0, 0.1, ())
    budget = SafetyPolicy().safety_link_budget_ms / 1000
    assert lost_at is not None and lost_at <= T0 + Supervisor.BIND_CONFIG_GRACE_S + budget + 0.02, lost_at


def test_the_status_budget_runs_from_the_verification_not_from_the_last_reply_before_it() -> None:
    bench = Bench()
    bench.bound_at, bench.configured_at = T0, float("inf")
    bench.run(T0 + 0.3, 0.1, STATUS + DISTANCES + ENABLES)
    bench.run(T0 + 1.5, 0.1, ())  # 1.2 s of configuration frames
    bench.configured_at = bench.now
    # the status block answers again within the budget of the verification: no fault
    assert bench.run(bench.now + 0.2, 1.0, ()) is None
    bench.answer(STATUS + DISTANCES + ENABLES)
    assert not bench.sup.evaluate().has("SAFETY_LINK_LOST")
    # ... but silence past the budget after it is a link loss again
    assert bench.run(bench.now + 0.5, 1.0, ()) is not None
