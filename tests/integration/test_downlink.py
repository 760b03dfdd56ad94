"""Commands from the centre through `Downlink.handle`, signed with a central key made here, against
a real core with the simulator (reached over its socket by the gateway's CoreClient) or, for the
refusals that never reach the core, against a real database alone. What counts is what lands in
the outbox's `results` stream, the commands table and the audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.link.client import CoreClient
from agent.store.audit import Audit
from agent.store.database import Database
from agent.store.outbox import Outbox, OutboxRecord
from agent.sync import envelope
from agent.sync.downlink import ACTOR, SOURCE, Downlink
from agent.sync.identity import PinnedKey
from agent.sync.replay import CommandRules
from drivers.sim.client import SimProcess
from tests.conftest import wait_for

AGENT = "oht-test"  # the agent id of tests/conftest.py's configuration
CENTRAL = Ed25519PrivateKey.generate()
CENTRAL_KEY = PinnedKey(CENTRAL.public_key())
RULES = CommandRules(agent=AGENT, max_age_s=300.0, clock_skew_s=30.0)
POWER = 2
WRITE = {"role": "power", "register": "USE_V_THS", "value": 1.5}


def stamp(offset_s: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed(
    command_id: str,
    type_: str = "register_write",
    params: dict[str, Any] | None = None,
    *,
    not_after: float = 60.0,
    issued_at: float = 0.0,
    agent: str | None = AGENT,
    key: Ed25519PrivateKey = CENTRAL,
) -> bytes:
    """A command as the centre publishes it: canonical JSON, signed."""
    command = envelope.make_command(
        command_id=command_id,
        type=type_,
        params=WRITE if params is None else params,
        not_after=stamp(not_after),
        issued_at=stamp(issued_at),
        sign=key.sign,
        agent=agent,
    )
    return envelope.encode_command(command)


async def receipts(db: Database, command_id: str) -> list[OutboxRecord]:
    """The `results` records the centre would match to `command_id` (every batch of the stream)."""
    found, after = [], 0
    while batch := await Outbox(db).batch("results", after, 1000):
        found += [r for r in batch if r.payload.get("idempotency_key") == command_id]
        after = batch[-1].seq
    return found


async def eventually(probe: Callable[[], Any], check: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if check(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def stored(db: Database, command_id: str):  # type: ignore[no-untyped-def]
    from agent.store.commands import Commands

    return await Commands(db).find(SOURCE, command_id, user=ACTOR)


# ------------------------------------------------------------------ with a real core


@pytest.fixture
async def linked(sim: SimProcess, agent_factory) -> AsyncIterator[tuple[Any, Database, CoreClient, Downlink]]:  # type: ignore[no-untyped-def]
    """A running core, and the gateway's side: its attached database, its core client, a downlink."""
    rt = await agent_factory(sim.link)
    db = await Database.open(rt.config.data_path, attach=True)
    client = CoreClient(rt.config.core_socket_path, db, agent_id=AGENT, retry_s=0.05)
    client.start()
    try:
        await asyncio.wait_for(client.connected.wait(), 5)
        yield rt, db, client, Downlink(client, Outbox(db), db, CENTRAL_KEY, RULES, core_wait_s=5.0)
    finally:
        await client.stop()
        await db.close()


async def test_a_command_runs_once_its_receipt_and_result_are_on_results_and_a_repeat_adds_nothing(
    linked,
    sim: SimProcess,  # type: ignore[no-untyped-def]
) -> None:
    rt, db, client, downlink = linked
    message = signed("c-run-1")
    await downlink.handle(message)
    done = await eventually(
        lambda: receipts(db, "c-run-1"), lambda rs: any(r.kind == "command_result" for r in rs), 5.0
    )
    assert [(r.kind, r.payload["state"]) for r in done] == [
        ("command", "queued"),
        ("command", "running"),
        ("command_result", "succeeded"),
    ], done
    assert all(r.payload["source"] == "upstream" and r.payload["type"] == "register_write" for r in done)
    seqs = [r.seq for r in done]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    # Delivered again (MQTT repeats), and again after its result: nothing runs, nothing is written.
    await downlink.handle(message)
    await downlink.handle(message)
    assert await receipts(db, "c-run-1") == done
    assert [w["values"] for w in sim.control.writes(POWER) if w["address"] == 0x004D] == [[150]]
    stats = downlink.stats()
    assert (stats.accepted, stats.duplicate) == (1, 2) and stats.codes == {"UPSTREAM_REPLAYED": 2}
    record = await stored(db, "c-run-1")
    assert record is not None and record.user == ACTOR and record.not_after is not None
    audit = [a for a in await Audit(db).list(0, 1000) if a.request_id == "c-run-1"]
    assert [(a.actor, a.action, a.result, a.target) for a in audit] == [(ACTOR, "command.submit", "ok", record.id)]

    # Parameters the core refuses: a 'rejected' receipt with the core's own code, nothing stored.
    await downlink.handle(signed("c-bad-params", "move", {"direction": "up", "speed_pct": 10, "duration_ms": 500}))
    [receipt] = await receipts(db, "c-bad-params")
    assert receipt.kind == "command_result" and receipt.payload["state"] == "rejected"
    assert receipt.payload["error_code"] == "COMMAND_INVALID" and await stored(db, "c-bad-params") is None

    # The core away for a moment: the command waits for it and then runs, once.
    assert rt.link is not None
    await rt.link.stop()
    assert await wait_for(lambda: not client.connected.is_set(), 2.0)
    waiting = asyncio.create_task(downlink.handle(signed("c-while-away", "stop", {})))
    await asyncio.sleep(0.2)
    assert not waiting.done() and await receipts(db, "c-while-away") == []
    await rt.link.start()
    await asyncio.wait_for(waiting, 6.0)
    after = await eventually(
        lambda: receipts(db, "c-while-away"), lambda rs: any(r.kind == "command_result" for r in rs), 5.0
    )
    assert after[0].payload["state"] == "queued" and after[-1].payload["state"] == "succeeded", after
    assert downlink.stats().accepted == 2


# ------------------------------------------------------------------ refusals: no core involved


@pytest.fixture
async def alone(tmp_path: Path) -> AsyncIterator[tuple[Database, CoreClient]]:
    """A real database and a core client whose core never comes: a refusal must not need it."""
    db = await Database.open(tmp_path / "data")
    client = CoreClient(tmp_path / "no-core.sock", db, agent_id=AGENT)
    try:
        yield db, client
    finally:
        await db.close()


async def test_refused_commands_get_one_receipt_each_with_their_code_and_never_run(alone) -> None:  # type: ignore[no-untyped-def]
    db, client = alone
    downlink = Downlink(client, Outbox(db), db, CENTRAL_KEY, RULES, core_wait_s=0.1)
    cases = {
        "c-expired": (signed("c-expired", not_after=-1.0, issued_at=-5.0), "expired", "UPSTREAM_EXPIRED"),
        "c-forged": (signed("c-forged", key=Ed25519PrivateKey.generate()), "rejected", "UPSTREAM_SIGNATURE_INVALID"),
        "c-old": (signed("c-old", issued_at=-301.0, not_after=60.0), "rejected", "UPSTREAM_STALE"),
        "c-ahead": (signed("c-ahead", issued_at=45.0, not_after=120.0), "rejected", "UPSTREAM_STALE"),
        "c-other": (signed("c-other", agent="oht-999"), "rejected", "UPSTREAM_WRONG_AGENT"),
    }
    for message, _, _ in cases.values():
        await downlink.handle(message)
    for command_id, (_, state, code) in cases.items():
        [receipt] = await receipts(db, command_id)
        assert receipt.kind == "command_result", receipt
        assert (receipt.payload["state"], receipt.payload["error_code"], receipt.payload["source"]) == (
            state,
            code,
            "upstream",
        )
        assert await stored(db, command_id) is None
    audit = {a.request_id: (a.result, a.code) for a in await Audit(db).list(0, 1000)}
    assert audit == {
        "c-expired": ("error", "UPSTREAM_EXPIRED"),
        "c-forged": ("denied", "UPSTREAM_SIGNATURE_INVALID"),
        "c-old": ("denied", "UPSTREAM_STALE"),
        "c-ahead": ("denied", "UPSTREAM_STALE"),
        "c-other": ("denied", "UPSTREAM_WRONG_AGENT"),
    }
    # A refused command is not stored: the same message again is judged again, and refused again.
    await downlink.handle(cases["c-forged"][0])
    assert len(await receipts(db, "c-forged")) == 2
    # Messages that are not commands: counted, nothing written at all.
    before = await Outbox(db).backlog()
    good = signed("c-altered")
    for junk in (b"", b"not json", b'{"v":1}', good.replace(b":", b": ", 1), good.replace(b'"v":1', b'"v":2')):
        await downlink.handle(junk)
    after = await Outbox(db).backlog()
    assert {s: b.last_seq for s, b in after.items()} == {s: b.last_seq for s, b in before.items()}
    stats = downlink.stats()
    assert (stats.expired, stats.rejected, stats.malformed, stats.accepted) == (1, 5, 5, 0), stats


async def test_a_command_arriving_while_the_core_stays_away_is_rejected_core_unavailable(alone) -> None:  # type: ignore[no-untyped-def]
    db, client = alone
    downlink = Downlink(client, Outbox(db), db, CENTRAL_KEY, RULES, core_wait_s=0.2)
    started = time.monotonic()
    await downlink.handle(signed("c-no-core", "stop", {}))
    assert time.monotonic() - started >= 0.2  # it waited for the core first
    [receipt] = await receipts(db, "c-no-core")
    assert (receipt.payload["state"], receipt.payload["error_code"]) == ("rejected", "CORE_UNAVAILABLE")
    assert await stored(db, "c-no-core") is None and downlink.stats().rejected == 1
