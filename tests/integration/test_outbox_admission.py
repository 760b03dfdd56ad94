"""A full outbox refuses new commands, and never the ones that only stop.

The quota reaches the core from `[upstream] critical_quota_bytes` (its smallest value, 4 MiB),
and the results stream is filled past it with large records, as a long outage would with many
small ones. Refused: a new move, resume or register write, with OUTBOX_FULL and no command row;
over HTTP 503 with the hint; from the centre a 'rejected' receipt. Taken: stop, pause,
charge_stop, and a repeat of a command stored before. Once the centre acknowledges, commands are
taken again."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent.auth.principal import CallContext, cli_principal
from agent.store.outbox import KIND_COMMAND_RESULT, Outbox
from agent.store.streams import StreamClass
from agent.sync.downlink import Downlink
from drivers.sim.client import SimProcess
from oht_errors import CodedError
from tests.conftest import gateway_for
from tests.integration.test_downlink import CENTRAL_KEY, RULES, receipts, signed
from tests.integration.test_safety import terminal

QUOTA = 4 * 1024 * 1024
UPSTREAM = f"[upstream]\ncritical_quota_bytes = {QUOTA}\n"
PASSWORD = "a long enough password"
MOVE = {"direction": "forward", "speed_pct": 10, "duration_ms": 500}
WRITE = {"role": "power", "register": "USE_V_THS", "value": 1.5}


async def submit(rt, key: str, type_: str, params: dict[str, Any]):  # type: ignore[no-untyped-def]
    return await rt.controller.submit_command(
        source="api", idempotency_key=key, type=type_, params=params, user="tester"
    )


async def test_a_full_outbox_refuses_new_commands_but_takes_stops_and_repeats(sim: SimProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rt = await agent_factory(sim.link, extra=UPSTREAM)
    outbox = rt.controller.outbox  # the core's, with the configured quotas
    assert outbox.limits.of(StreamClass.CRITICAL).quota_bytes == QUOTA
    early = await submit(rt, "early", "register_write", WRITE)
    for _ in range(QUOTA // 250_000 + 1):  # results the centre has not acknowledged
        await outbox.add(KIND_COMMAND_RESULT, {"pad": "x" * 250_000})
    assert await outbox.admission() is not None

    for key, type_, params in (("m", "move", MOVE), ("r", "resume", {}), ("w", "register_write", WRITE)):
        with pytest.raises(CodedError) as refused:
            await submit(rt, key, type_, params)
        assert refused.value.code == "OUTBOX_FULL" and refused.value.hint
        assert await rt.controller.commands.find("api", key, user="tester") is None
    for key, type_ in (("s", "stop"), ("p", "pause"), ("c", "charge_stop")):
        assert (await submit(rt, key, type_, {})).created
    again = await submit(rt, "early", "register_write", WRITE)  # the client lost the first answer
    assert not again.created and again.record.id == early.record.id

    async with gateway_for(rt) as gw:
        api = gw.api.app.state.api
        await api.auth.create_user(cli_principal("test"), "olga", "operator", PASSWORD, CallContext())
        async with httpx.AsyncClient(base_url=gw.api.url, timeout=10.0) as http:
            token = (await http.post("/api/v1/auth/login", json={"username": "olga", "password": PASSWORD})).json()[
                "token"
            ]
            auth = {"Authorization": f"Bearer {token}"}
            answer = await http.post(
                "/api/v1/commands",
                json={"type": "move", "params": MOVE},
                headers={**auth, "Idempotency-Key": "http-move"},
            )
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["code"] == "OUTBOX_FULL" and "acknowledges" in body["hint"]
            stop = await http.post(
                "/api/v1/commands", json={"type": "stop"}, headers={**auth, "Idempotency-Key": "http-stop"}
            )
            assert stop.status_code == 201, stop.text

        assert gw.db is not None and gw.client is not None
        downlink = Downlink(gw.client, Outbox(gw.db), gw.db, CENTRAL_KEY, RULES)
        await downlink.handle(signed("c-full", "move", MOVE))
        [receipt] = await receipts(gw.db, "c-full")
        assert (receipt.payload["state"], receipt.payload["error_code"]) == ("rejected", "OUTBOX_FULL")

    # The centre acknowledges what it has: there is room again.
    last = (await outbox.backlog())["results"].last_seq
    await outbox.ack("results", last)
    after = await submit(rt, "w", "register_write", WRITE)
    assert after.created
    assert (await terminal(rt, after.record.id)).state == "succeeded"
