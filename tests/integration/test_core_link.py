"""The core socket with the real core (simulator on a pty) and the real client: who gets in, what
crosses, what the gateway sees while the core is away."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from agent.link import protocol as p
from agent.link.client import CoreClient
from agent.link.server import CoreServer
from agent.store.database import Database
from drivers.sim.client import SimProcess
from tests.conftest import gateway_for, wait_for

# Runs an agent in this process and asserts its timing: `make test` runs it alone.
pytestmark = pytest.mark.realtime


def short_socket() -> Path:
    return Path(tempfile.mkdtemp(prefix="oht-link-")) / "core.sock"


async def test_a_peer_whose_uid_is_not_allowed_is_refused_before_it_is_heard(
    sim: SimProcess, agent_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    path = short_socket()
    strict = CoreServer(rt.controller, path, allowed_uids={os.getuid() + 4242})
    await strict.start()
    db = await Database.open(rt.config.data_path, attach=True)
    client = CoreClient(path, db, agent_id="test", retry_s=0.05)
    client.start()
    try:
        await asyncio.sleep(0.5)
        assert not client.connected.is_set() and not strict.connections
        ok, reasons = client.ready()
        assert not ok and "core process not connected" in reasons[0], reasons
        with pytest.raises(p.CoreUnavailable):
            client.status()
        with pytest.raises(p.CoreUnavailable):
            await client.request("ping", {})
    finally:
        await client.stop()
        await db.close()
        await strict.stop()
    assert not path.exists(), "the socket file outlived its server"


async def test_the_client_reads_the_view_and_changes_go_through_the_core(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    async with gateway_for(rt) as gw:
        client = gw.client
        assert client.status()["state"] == "IDLE"
        assert {m["role"] for m in client.modules()} == set(rt.pollers)
        travel = client.module("travel")
        assert travel["values"]["M1_ENABLE"]["age_ms"] >= 0
        assert (await client.request("ping", {}))["pid"] == os.getpid()
        result = await client.estop(source="api", user="tester", reason="link test")
        assert result.confirmed, result
        # The change reached the view before the reply did: no stale read after an acknowledged E-stop.
        assert client.status()["state"] == "ESTOP"
        with pytest.raises(Exception) as refused:
            await client.cancel_command("no-such-command", user="tester")
        assert getattr(refused.value, "code", "") == "COMMAND_NOT_FOUND"


async def test_while_the_core_is_away_the_client_says_so_and_comes_back_by_itself(
    sim: SimProcess, agent_factory
) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link)
    async with gateway_for(rt) as gw:
        client = gw.client
        assert rt.link is not None
        await rt.link.stop()
        assert await wait_for(lambda: not client.ready()[0], 2.0)
        with pytest.raises(p.CoreUnavailable) as away:
            await client.submit_command(source="api", idempotency_key="k", type="stop", params={}, user="t")
        assert away.value.hint
        await rt.link.start()
        assert await wait_for(lambda: client.connected.is_set() and client.ready()[0], 5.0), client.ready()
        record = (
            await client.submit_command(source="api", idempotency_key="k", type="stop", params={}, user="t")
        ).record
        assert (await client.get_command(record.id)).id == record.id  # read from the database, not the core


async def test_the_estop_early_path_stops_from_a_known_credential_only(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from agent.api.routes.control import early_estop_hook
    from agent.auth.principal import CallContext, cli_principal

    rt = await agent_factory(sim.link)
    async with gateway_for(rt) as gw:
        app = gw.api.app
        await app.state.api.auth.create_user(
            cli_principal("test"), "vic", "viewer", "a long enough password", CallContext()
        )
        async with httpx.AsyncClient(base_url=gw.api.url) as http:
            token = (
                await http.post("/api/v1/auth/login", json={"username": "vic", "password": "a long enough password"})
            ).json()["token"]
            assert (await http.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        hook = early_estop_hook(app)

        def head(path: str, credential: str) -> dict[str, object]:
            return {
                "type": "http",
                "method": "POST",
                "path": path,
                "headers": [(b"authorization", f"Bearer {credential}".encode())],
            }

        hook(head("/api/v1/estop", "not-a-session-token"))
        hook(head("/api/v1/reset", token))  # only the E-stop has an early path
        await asyncio.sleep(0.3)
        assert rt.controller.sm.state.value == "IDLE", "an unknown credential or another route stopped the robot"
        hook(head("/api/v1/estop", token))  # a viewer's cached session: every role may stop
        assert await wait_for(lambda: rt.controller.sm.state.value == "ESTOP", 2.0)
        assert await wait_for(lambda: gw.client.status()["state"] == "ESTOP", 2.0)
