"""Idempotency keys through the real HTTP API are scoped by the caller: the same Idempotency-Key
from two users makes two commands, and only a user's own repeat gets their first record back.

The agent is the real core and gateway on the simulator. The test does not wait for the robot to
be ready (`/readyz`, about 2.5 s): submitting a command needs only the core's link and database.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from drivers.sim.client import SimProcess
from tests.integration.test_api_harness import Agent

KEY = {"Idempotency-Key": "shift-start-1"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    tmp = tmp_path_factory.mktemp("agent")
    sim = SimProcess(tmp / "bus.tty", tmp / "bus.ctl", seed=7)
    sim.start()
    running = Agent(tmp, sim.link)
    try:
        yield running.start()
    finally:
        running.stop()
        sim.stop()


def submit(client: httpx.Client, body: dict[str, object]) -> httpx.Response:
    return client.post("/api/v1/commands", json=body, headers=KEY)


def test_the_same_key_from_two_operators_makes_two_commands(agent: Agent) -> None:
    agent.add_user("oona", "operator")
    agent.add_user("otis", "operator")
    with agent.client(agent.login("oona")) as oona, agent.client(agent.login("otis")) as otis:
        first = submit(oona, {"type": "stop"})
        other = submit(otis, {"type": "stop"})
        assert (first.status_code, other.status_code) == (201, 201), (first.text, other.text)
        mine, theirs = first.json(), other.json()
        assert mine["id"] != theirs["id"]
        assert (mine["user"], theirs["user"]) == ("oona", "otis")
        # Each user's repeat answers with that user's own first record.
        again = submit(oona, {"type": "stop"})
        assert again.status_code == 200 and again.json()["id"] == mine["id"]
        again = submit(otis, {"type": "stop"})
        assert again.status_code == 200 and again.json()["id"] == theirs["id"]
        # A different body under one's own key is still refused.
        reused = submit(otis, {"type": "pause"})
        assert reused.status_code == 409 and reused.json()["code"] == "COMMAND_KEY_REUSED"
        listed = [
            c["id"] for c in oona.get("/api/v1/commands").json() if c["idempotency_key"] == KEY["Idempotency-Key"]
        ]
        assert sorted(listed) == sorted([mine["id"], theirs["id"]])
