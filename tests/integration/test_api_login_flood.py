"""A flood of failed logins waits for the password-hashing threads in slots of its own: it cannot
hold the admission slots every other request needs (a technician's reset, a status read)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_api_harness import Agent, start_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    # Limits high enough that every failed login costs a real password check (no cheap 429).
    options = {"login_ip_failures": 1000, "login_account_failures": 100, "login_window_s": 10}
    for agent, _sim in start_agent(tmp_path_factory.mktemp("flood"), options):
        agent.add_user("vera", "viewer")
        yield agent


def test_status_is_answered_while_failed_logins_queue_for_the_hashing_threads(agent: Agent) -> None:
    token = agent.login("vera")
    done: list[float] = []
    stop = threading.Event()

    def flood(n: int) -> None:
        with httpx.Client(base_url=agent.url, timeout=60.0) as c:
            while not stop.is_set():
                c.post(
                    "/api/v1/auth/login", json={"username": f"nobody-{n}", "password": "wrong password, long enough"}
                )
                done.append(time.monotonic())

    threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(24)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # the slots and the hashing threads are taken; more logins wait behind them
        answered_before = len(done)
        with agent.client(token) as c:
            started = time.monotonic()
            status = c.get("/api/v1/status")
            took = time.monotonic() - started
        logins_meanwhile = sum(1 for at in done[answered_before:] if started <= at <= started + took)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert status.status_code == 200, status.text
    # 24 logins queue for 2 hashing threads (each check tens of ms): with shared slots a status read
    # waited behind several of them; with slots of their own it passes them all.
    assert logins_meanwhile <= 2, (
        f"{logins_meanwhile} logins finished while one status read waited ({took * 1000:.0f} ms)"
    )
