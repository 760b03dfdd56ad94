"""The WebSocket status stream: single-use tickets, snapshot then changes, rate limit, slow clients."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.exceptions
import websockets.sync.client

from drivers.sim.client import SimProcess
from tests.integration.test_api_harness import Agent, start_agent


@pytest.fixture(scope="module")
def stream_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, SimProcess]]:
    yield from start_agent(tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module")
def agent(stream_agent: tuple[Agent, SimProcess]) -> Agent:
    agent, _ = stream_agent
    agent.add_user("watcher", "viewer")
    agent.add_user("boss", "admin")
    return agent


def ticket(agent: Agent, token: str) -> str:
    with agent.client(token) as c:
        r = c.post("/api/v1/stream/ticket")
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] <= 10
    return str(r.json()["ticket"])


def ws_url(agent: Agent, ticket_value: str | None) -> str:
    base = agent.url.replace("http://", "ws://") + "/api/v1/stream"
    return base if ticket_value is None else f"{base}?ticket={ticket_value}"


def connect(agent: Agent, ticket_value: str | None) -> websockets.sync.client.ClientConnection:
    return websockets.sync.client.connect(ws_url(agent, ticket_value), open_timeout=5, proxy=None)


def recv_json(
    ws: websockets.sync.client.ClientConnection, timeout: float = 5.0, *, values: bool = False
) -> dict[str, Any]:
    """The next status message (snapshot or change); the modules' values messages are skipped
    unless `values`."""
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
        if values or message["type"] != "values":
            return message


def test_the_stream_carries_the_modules_values_with_their_age(agent: Agent) -> None:
    token = agent.login("watcher")
    with connect(agent, ticket(agent, token)) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        deadline = time.monotonic() + 5
        while (msg := recv_json(ws, values=True))["type"] != "values":
            assert time.monotonic() < deadline, "no values message within 5 s"
        travel = msg["modules"]["travel"]
        position = travel["M1_POSITION_CURRENT"]
        assert set(position) >= {"value", "age_ms", "quality"} and position["age_ms"] < 5000, position
        assert {"power", "safety", "travel"} <= set(msg["modules"]), sorted(msg["modules"])


def test_snapshot_then_changes(agent: Agent) -> None:
    token = agent.login("watcher")
    with connect(agent, ticket(agent, token)) as ws:
        first = recv_json(ws)
        assert first["type"] == "snapshot" and first["status"]["state"] and "verdict" in first["status"]
        with agent.client(token) as c:
            assert c.post("/api/v1/estop", json={"reason": "stream test"}).status_code == 200
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            msg = recv_json(ws)
            assert msg["type"] == "change" and msg["seq"] >= 1
            if msg["changes"].get("state") == "ESTOP":
                seen = msg
                break
        assert seen is not None, "the E-stop never reached the stream"
    boss = agent.login("boss")
    with agent.client(boss) as c:
        assert c.post("/api/v1/reset").status_code in (200, 409)


def test_ticket_is_single_use_and_required(agent: Agent) -> None:
    token = agent.login("watcher")
    t = ticket(agent, token)
    with connect(agent, t) as ws:
        assert recv_json(ws)["type"] == "snapshot"
    for value in (t, None, "x" * 43, token):  # reused, missing, unknown, a session token instead
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            connect(agent, value)
        assert info.value.response.status_code == 403
    with agent.client(agent.login("boss")) as c:
        rows = c.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
    opened = [r for r in rows if r["action"] == "stream.open"]
    assert any(r["result"] == "ok" and r["actor"] == "watcher" for r in opened)
    assert sum(r["result"] == "denied" for r in opened) >= 4


def test_rate_limit_coalesces_to_the_latest(agent: Agent) -> None:
    token = agent.login("watcher")
    with connect(agent, ticket(agent, token)) as ws:
        snapshot = recv_json(ws)["status"]
        hub = agent.api.streams

        async def burst() -> None:
            import asyncio

            for i in range(100):  # 100 updates in about 0.5 s
                hub._on_status({**snapshot, "uptime_s": 10_000 + i})
                await asyncio.sleep(0.005)

        started = time.monotonic()
        agent.run(burst())
        received = []
        while True:
            try:
                msg = recv_json(ws, timeout=0.6)
            except TimeoutError:
                break
            if "uptime_s" in msg["changes"]:
                received.append((time.monotonic() - started, msg["changes"]["uptime_s"]))
        assert received, "no change arrived"
        elapsed = max(received[-1][0], 0.1)
        assert len(received) <= 10 * elapsed + 2, f"{len(received)} messages in {elapsed:.2f} s"
        assert len(received) < 20, "updates were not coalesced"
        assert received[-1][1] == 10_099, "the newest update must win"


def test_logout_ends_the_stream(agent: Agent) -> None:
    token = agent.login("watcher")
    with connect(agent, ticket(agent, token)) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        with agent.client(token) as c:
            assert c.post("/api/v1/auth/logout").status_code == 200
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            while True:  # the credential is re-checked every stream_recheck_s (5 s by default)
                ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


def test_a_client_that_does_not_read_is_closed(agent: Agent) -> None:
    """A raw client completes the handshake, then never reads: the agent must drop it, not buffer."""
    token = agent.login("watcher")
    t = ticket(agent, token)
    host, port = agent.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/v1/stream?ticket={t} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(200)
    before = agent.api.metrics.stream_dropped._value.get()
    big = {"state": "X"}

    async def flood() -> None:
        import asyncio

        for i in range(200):
            # Each update differs in a large field, so each change message is large.
            agent.api.streams._on_status({**big, "padding": f"{i:04d}" * 50_000})
            await asyncio.sleep(0.1)
            if agent.api.metrics.stream_dropped._value.get() > before:
                return

    agent.run(flood(), timeout=30)
    assert agent.api.metrics.stream_dropped._value.get() == before + 1
    sock.close()
    deadline = time.monotonic() + 5
    while agent.api.streams.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.api.streams.clients == 0
