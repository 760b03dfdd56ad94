"""Shared set-up for the API tests: the real core against the simulator, and the real gateway.

The core (`Runtime`) and the gateway (`Gateway`: the API, joined to the core by its Unix socket
exactly as in the daemon) run in a thread with its own event loop; in the daemon they are two
processes, which the system tests cover. Tests talk to it over real HTTP on 127.0.0.1 with httpx, and reach
into it only to arrange what has no API (e.g. a session that is already expired), through
`Agent.run(coro)` on the agent's own loop. There is no mock of the robot: the simulator is a
separate process on a real pty.

This module holds no tests; the test modules import `Agent` and `agent_fixture` from it.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from agent.api import ApiServer
from agent.api.context import ApiContext
from agent.auth import tokens
from agent.auth.principal import CallContext, cli_principal
from agent.config import validate_config
from agent.gateway import Gateway
from agent.runtime import Runtime
from agent.store import sessions as sessions_store
from agent.store import users as users_store
from drivers.sim.client import SimProcess

T = TypeVar("T")
PASSWORD = "copper kettle on a windy pier"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """The core (`Runtime`) and the gateway serving the API on 127.0.0.1, in a thread with its own loop."""

    def __init__(self, tmp: Path, link: str, api: dict[str, Any] | None = None) -> None:
        self.data = tmp / "data"
        self.link = link
        self.api_options = dict(api or {})
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtime: Runtime | None = None
        self.gateway: Gateway | None = None
        self.server: ApiServer | None = None
        self.app: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> Agent:
        # The test's own thread (httpx, hypothesis) shares the GIL with the agent under test,
        # which the daemon never does; a short switch interval keeps the test from holding the
        # agent's control loop up (its LOOP_LAG warning is at 50 ms).
        sys.setswitchinterval(0.001)
        self._thread = threading.Thread(target=self._main, name="agent-under-test", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the agent did not start in time")
        if self._error is not None:
            raise RuntimeError("the agent failed to start") from self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.run_until_complete(self._stop())
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._stop())
        loop.close()

    async def _start(self) -> None:
        cfg = validate_config(
            {
                "agent": {"id": "oht-test", "data_dir": str(self.data)},
                "bus": {"port": self.link, "rediscover_s": 0.5},
                "api": {"host": "127.0.0.1", "port": free_port(), **self.api_options},
            }
        )
        self.runtime = Runtime(cfg)
        await self.runtime.start()
        self.gateway = Gateway(cfg)
        await self.gateway.start()
        assert self.gateway.client is not None and self.gateway.api is not None
        await asyncio.wait_for(self.gateway.client.connected.wait(), 20)
        self.server = self.gateway.api
        self.app = self.server.app
        self.url = self.server.url

    async def _stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.shutdown()
        if self.runtime is not None:
            await self.runtime.shutdown()

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)

    # ------------------------------------------------------------------ reaching in

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def api(self) -> ApiContext:
        return self.app.state.api  # type: ignore[no-any-return]

    def add_user(self, name: str, role: str, password: str = PASSWORD) -> None:
        self.run(self.api.auth.create_user(cli_principal("test"), name, role, password, CallContext()))

    def add_session(self, name: str, *, lifetime_s: float = 3600.0, idle_s: int = 1800, seen_ago_s: float = 0.0) -> str:
        """A session written straight into the store (e.g. one that is already expired)."""
        from agent.store.clock import utc_now

        token = tokens.new_session_token()

        async def make() -> None:
            user = await self.api.db.read(lambda conn: users_store.get_by_name_in(conn, name))
            assert user is not None
            now = utc_now() - timedelta(seconds=seen_ago_s)
            await self.api.db.write(
                lambda conn: sessions_store.create_in(
                    conn,
                    user_id=user.id,
                    token_hash=tokens.digest(token),
                    lifetime=timedelta(seconds=lifetime_s),
                    idle_timeout_s=idle_s,
                    source_ip="127.0.0.1",
                    now=now,
                )
            )

        self.run(make())
        return token

    def client(self, token: str | None = None, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Client:
        all_headers = {"Authorization": f"Bearer {token}"} if token else {}
        all_headers.update(headers or {})
        return httpx.Client(base_url=self.url, headers=all_headers, timeout=15.0, **kwargs)

    def login(self, name: str, password: str = PASSWORD) -> str:
        with self.client() as c:
            r = c.post("/api/v1/auth/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        with self.client() as c:
            while time.monotonic() < deadline:
                last = c.get("/readyz")
                if last.status_code == 200:
                    return
                time.sleep(0.2)
        raise AssertionError(f"agent not ready within {timeout} s: {last.text if last else '-'}")


def start_agent(tmp_path: Path, api: dict[str, Any] | None = None) -> Iterator[tuple[Agent, SimProcess]]:
    """Simulator process + agent; both stopped afterwards. Use from module-scoped fixtures."""
    sim = SimProcess(tmp_path / "bus.tty", tmp_path / "bus.ctl", seed=7)
    sim.start()
    agent = Agent(tmp_path, sim.link, api)
    try:
        agent.start()
        agent.wait_ready()
        yield agent, sim
    finally:
        agent.stop()
        sim.stop()


@pytest.fixture(scope="module")
def agent_and_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, SimProcess]]:
    yield from start_agent(tmp_path_factory.mktemp("agent"))
