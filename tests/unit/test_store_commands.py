"""Commands repository: idempotency, ordering, deadlines, the lifecycle and its outbox rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from agent.store.commands import (
    ALLOWED_TRANSITIONS,
    STATES,
    CommandExpired,
    Commands,
    finish_in,
    mark_running_in,
)
from agent.store.database import Database
from agent.store.errors import (
    CommandInvalid,
    CommandKeyConflict,
    CommandNotCancellable,
    CommandNotFound,
    CommandStateError,
    StoreError,
)
from agent.store.transitions import recent_transitions, record_transition

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data")
    yield database
    await database.close()


@pytest.fixture
def commands(db: Database) -> Commands:
    return Commands(db)


async def outbox_rows(db: Database) -> list[tuple[str, dict[str, Any]]]:
    import json

    rows = await db.read(lambda conn: conn.execute_fetchall("SELECT kind, payload FROM outbox ORDER BY seq"))
    return [(r[0], json.loads(r[1])) for r in rows]


# ------------------------------------------------------------------------- submit


async def test_same_key_gives_the_same_record_without_a_second_command(db: Database, commands: Commands) -> None:
    first, created = await commands.submit("api", "key-1", "move", {"to": 3}, user="ann")
    again, created_again = await commands.submit("api", "key-1", "move", {"to": 3}, user="ann")
    assert created is True and created_again is False  # HTTP 201, then 200
    assert again == first
    assert first.state == "queued" and first.priority == 5 and first.user == "ann"
    assert await commands.get(first.id) == first
    outbox = await outbox_rows(db)
    assert [kind for kind, _ in outbox] == ["command"]
    assert outbox[0][1] == first.to_dict()  # the payload is the committed record


async def test_the_same_key_from_another_user_is_another_command(db: Database, commands: Commands) -> None:
    """Keys are the client's choice: one user's key must not swallow another user's command."""
    ann, _ = await commands.submit("api", "key-1", "move", {"to": 3}, user="ann")
    bob, created = await commands.submit("api", "key-1", "move", {"to": 4}, user="bob")  # no conflict either
    assert created is True and bob.id != ann.id and (bob.user, bob.params) == ("bob", {"to": 4})
    assert (await commands.submit("api", "key-1", "move", {"to": 4}, user="bob")) == (bob, False)
    with pytest.raises(CommandKeyConflict):
        await commands.submit("api", "key-1", "move", {"to": 4}, user="ann")  # ann's key names her own
    assert [kind for kind, _ in await outbox_rows(db)] == ["command", "command"]
    # Without a user (upstream) the key is still unique per source: NULLs do not slip past it.
    first, _ = await commands.submit("upstream", "key-1", "move", {"to": 5})
    assert (await commands.submit("upstream", "key-1", "move", {"to": 5})) == (first, False)
    assert len(await commands.list()) == 3


async def test_an_api_command_must_name_its_user(db: Database, commands: Commands) -> None:
    with pytest.raises(CommandInvalid) as err:
        await commands.submit("api", "key-1", "move", {})
    assert "user" in err.value.message
    assert await commands.list() == [] and await outbox_rows(db) == []


async def test_same_key_with_different_content_is_a_conflict(commands: Commands) -> None:
    await commands.submit("api", "key-1", "move", {"to": 3}, user="ann")
    with pytest.raises(CommandKeyConflict) as err:
        await commands.submit("api", "key-1", "move", {"to": 4}, user="ann")
    assert err.value.code == "COMMAND_KEY_REUSED"
    with pytest.raises(CommandKeyConflict):
        await commands.submit("api", "key-1", "hoist", {"to": 3}, user="ann")
    # Key order in params does not matter; the source is part of the key.
    await commands.submit("api", "key-2", "move", {"a": 1, "b": 2}, user="ann")
    _, created = await commands.submit("api", "key-2", "move", {"b": 2, "a": 1}, user="ann")
    assert created is False
    _, created = await commands.submit("upstream", "key-1", "move", {"to": 9})
    assert created is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"source": "web"}, "source"),
        ({"idempotency_key": ""}, "idempotency key"),
        ({"idempotency_key": "x" * 201}, "idempotency key"),
        ({"type": "1move"}, "type"),
        ({"params": ["not", "an", "object"]}, "params"),
        ({"params": {"x": float("nan")}}, "params"),
        ({"priority": 0}, "priority"),
        ({"priority": 11}, "priority"),
        ({"priority": True}, "priority"),
        ({"not_after": datetime(2026, 1, 1)}, "not_after"),  # naive: zone unknown
        ({"not_after": "tomorrow"}, "not_after"),
        ({"user": ""}, "user"),
        ({"user": "u" * 65}, "user"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    db: Database, commands: Commands, changes: dict[str, Any], field: str
) -> None:
    request: dict[str, Any] = {
        "source": "api",
        "idempotency_key": "k",
        "type": "move",
        "params": {},
        "user": "ann",
        **changes,
    }
    extra = {k: request.pop(k) for k in ("priority", "not_after", "user") if k in request}
    with pytest.raises(CommandInvalid) as err:
        await commands.submit(
            request["source"], request["idempotency_key"], request["type"], request["params"], **extra
        )
    assert field in err.value.message and err.value.code == "COMMAND_INVALID"
    assert await commands.list() == [] and await outbox_rows(db) == []


async def test_deadline_is_stored_in_utc(commands: Commands) -> None:
    local = datetime(2026, 11, 25, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    record, _ = await commands.submit("api", "k", "move", {}, not_after=local, user="ann")
    assert record.not_after == "2026-11-25T12:00:00.000000Z"
    record, _ = await commands.submit("api", "k2", "move", {}, not_after="2026-11-25T12:00:00Z", user="ann")
    assert record.not_after == "2026-11-25T12:00:00.000000Z"


# ------------------------------------------------------------------------- order and deadlines


async def test_next_runnable_is_most_urgent_then_first_come(commands: Commands) -> None:
    low, _ = await commands.submit("api", "low", "move", {}, priority=2, user="ann")
    first5, _ = await commands.submit("api", "a5", "move", {}, priority=5, user="ann")
    second5, _ = await commands.submit("api", "b5", "move", {}, priority=5, user="ann")
    urgent, _ = await commands.submit("api", "urgent", "move", {}, priority=10, user="ann")
    expired, _ = await commands.submit(
        "api",
        "late",
        "move",
        {},
        priority=10,
        not_after=NOW - timedelta(seconds=1),
        user="ann",
    )
    order = []
    while (record := await commands.next_runnable(NOW)) is not None:
        order.append(record.id)
        await commands.mark_running(record.id, NOW)
        await commands.finish(record.id, "succeeded")
    assert order == [urgent.id, first5.id, second5.id, low.id]
    assert (await commands.get(expired.id)).state == "queued"  # not run, waiting for expiry


async def test_expire_due_expires_only_queued_commands_past_their_deadline(db: Database, commands: Commands) -> None:
    due, _ = await commands.submit("api", "due", "move", {}, not_after=NOW, user="ann")
    later, _ = await commands.submit("api", "later", "move", {}, not_after=NOW + timedelta(hours=1), user="ann")
    running, _ = await commands.submit("api", "run", "move", {}, not_after=NOW + timedelta(seconds=1), user="ann")
    await commands.mark_running(running.id, NOW)
    expired = await commands.expire_due(NOW + timedelta(seconds=30))
    assert [r.id for r in expired] == [due.id]
    assert expired[0].state == "expired" and expired[0].error_code == "COMMAND_EXPIRED"
    assert (await commands.get(later.id)).state == "queued"
    assert (await commands.get(running.id)).state == "running"  # the executor's business
    assert await commands.expire_due(NOW + timedelta(seconds=30)) == []
    results = [p for kind, p in await outbox_rows(db) if kind == "command_result"]
    assert [(p["id"], p["state"]) for p in results] == [(due.id, "expired")]


async def test_starting_after_the_deadline_expires_instead(commands: Commands) -> None:
    record, _ = await commands.submit("api", "k", "move", {}, not_after=NOW, user="ann")
    with pytest.raises(CommandExpired) as err:
        await commands.mark_running(record.id, NOW + timedelta(milliseconds=1))
    assert err.value.code == "COMMAND_EXPIRED"
    stored = await commands.get(record.id)
    assert stored.state == "expired" and stored.attempts == 0


# ------------------------------------------------------------------------- lifecycle


async def test_happy_path_and_its_outbox_rows(db: Database, commands: Commands) -> None:
    record, _ = await commands.submit("cli", "k", "hoist", {"mm": 100})
    running = await commands.mark_running(record.id, NOW)
    assert running.state == "running" and running.attempts == 1 and running.started_at
    done = await commands.finish(record.id, "succeeded", result={"mm": 99})
    assert done.state == "succeeded" and done.result == {"mm": 99} and done.finished_at
    assert (await commands.get(record.id)) == done
    kinds = [(kind, p["state"]) for kind, p in await outbox_rows(db)]
    assert kinds == [("command", "queued"), ("command", "running"), ("command_result", "succeeded")]


async def test_failure_keeps_code_and_message(commands: Commands) -> None:
    record, _ = await commands.submit("api", "k", "move", {}, user="ann")
    await commands.mark_running(record.id)
    failed = await commands.finish(record.id, "failed", error_code="MOTOR_STALL", error_message="stalled at 3 m")
    assert (failed.error_code, failed.error_message) == ("MOTOR_STALL", "stalled at 3 m")
    with pytest.raises(CommandInvalid):
        await commands.finish(record.id, "failed", error_code="lower case")


async def test_cancel_rules(commands: Commands) -> None:
    queued, _ = await commands.submit("api", "q", "move", {}, user="ann")
    running, _ = await commands.submit("api", "r", "move", {}, user="ann")
    await commands.mark_running(running.id)
    cancelled = await commands.cancel(queued.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at
    with pytest.raises(CommandNotCancellable) as err:
        await commands.cancel(running.id)
    assert isinstance(err.value, CommandStateError) and err.value.code == "COMMAND_NOT_CANCELLABLE"
    with pytest.raises(CommandStateError):
        await commands.cancel(queued.id)  # already cancelled
    with pytest.raises(CommandNotFound) as missing:
        await commands.cancel("no-such-id")
    assert missing.value.code == "COMMAND_NOT_FOUND"
    assert (await commands.finish(running.id, "cancelled")).state == "cancelled"


async def _drive_to(commands: Commands, db: Database, state: str, key: str) -> str:
    record, _ = await commands.submit("api", key, "move", {}, not_after=NOW + timedelta(hours=1), user="ann")
    if state == "queued":
        return record.id
    if state == "expired":
        await commands.expire_due(NOW + timedelta(hours=2))
        return record.id
    if state == "cancelled":
        await commands.cancel(record.id)
        return record.id
    await commands.mark_running(record.id, NOW)
    if state == "running":
        return record.id
    if state == "interrupted":
        await db.write(lambda conn: _interrupt(conn))
        return record.id
    await commands.finish(record.id, state)
    return record.id


async def _interrupt(conn: aiosqlite.Connection) -> None:
    from agent.store.commands import interrupt_running_in

    await interrupt_running_in(conn)


@pytest.mark.parametrize("state", STATES)
async def test_every_change_outside_the_lifecycle_is_refused(db: Database, commands: Commands, state: str) -> None:
    command_id = await _drive_to(commands, db, state, f"k-{state}")
    assert (await commands.get(command_id)).state == state
    attempts = {
        "running": lambda: commands.mark_running(command_id, NOW),
        "succeeded": lambda: commands.finish(command_id, "succeeded"),
        "failed": lambda: commands.finish(command_id, "failed"),
        "cancelled": lambda: commands.cancel(command_id),
    }
    for target, attempt in attempts.items():
        allowed = target in ALLOWED_TRANSITIONS[state]
        if target == "cancelled" and state == "running":
            allowed = False  # cancel() refuses; finish(..., "cancelled") is the executor's way
        if allowed:
            continue
        with pytest.raises(CommandStateError):
            await attempt()
        assert (await commands.get(command_id)).state == state


async def test_finish_only_takes_terminal_results(commands: Commands) -> None:
    record, _ = await commands.submit("api", "k", "move", {}, user="ann")
    await commands.mark_running(record.id)
    for state in ("queued", "running", "expired", "interrupted", "paused"):
        with pytest.raises(CommandStateError):
            await commands.finish(record.id, state)


async def test_running_commands_are_interrupted_at_start_and_never_requeued(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data")
    commands = Commands(db)
    running, _ = await commands.submit("api", "r", "move", {}, user="ann")
    queued, _ = await commands.submit("api", "q", "move", {}, user="ann")
    await commands.mark_running(running.id)
    await db.close()  # as if the agent died here
    db = await Database.open(tmp_path / "data")
    try:
        commands = Commands(db)
        assert db.report is not None and db.report.interrupted_commands == 1
        stored = await commands.get(running.id)
        assert stored.state == "interrupted" and stored.error_code == "AGENT_RESTARTED"
        assert (await commands.get(queued.id)).state == "queued"
        assert (await commands.next_runnable()).id == queued.id  # type: ignore[union-attr]
        assert await commands.interrupt_running_on_start() == 0
        results = [p for kind, p in await outbox_rows(db) if kind == "command_result"]
        assert [(p["id"], p["state"]) for p in results] == [(running.id, "interrupted")]
    finally:
        await db.close()


# ------------------------------------------------------------------------- composition and reads


async def test_transition_recorded_in_the_same_transaction_as_its_cause(db: Database, commands: Commands) -> None:
    record, _ = await commands.submit("api", "k", "move", {}, user="ann")

    async def start(conn: aiosqlite.Connection) -> None:
        await mark_running_in(conn, record.id)
        await record_transition(conn, "IDLE", "MOVING", "COMMAND_STARTED", "move", record.id)

    await db.write(start)
    transitions = await recent_transitions(db)
    assert [(t.from_state, t.to_state, t.command_id) for t in transitions] == [("IDLE", "MOVING", record.id)]

    async def finish_then_fail(conn: aiosqlite.Connection) -> None:
        await finish_in(conn, record.id, "succeeded")
        await record_transition(conn, "MOVING", "IDLE", "DONE", None, "no-such-command")

    with pytest.raises(StoreError) as err:  # the foreign key refuses: both are rolled back
        await db.write(finish_then_fail)
    assert err.value.code == "STORE_CONSTRAINT"
    assert (await commands.get(record.id)).state == "running"
    kinds = [kind for kind, _ in await outbox_rows(db)]
    assert kinds == ["command", "command", "transition"]


async def test_list_filters_and_pages_newest_first(commands: Commands) -> None:
    ids = [(await commands.submit("api", f"k{i}", "move", {}, user="ann"))[0].id for i in range(7)]
    await commands.mark_running(ids[2])
    page1 = await commands.list(limit=3)
    page2 = await commands.list(limit=3, before_seq=page1[-1].seq)
    assert [r.id for r in page1 + page2] == ids[::-1][:6]
    assert [r.id for r in await commands.list(state="running")] == [ids[2]]
    with pytest.raises(CommandInvalid):
        await commands.list(state="sleeping")
    with pytest.raises(CommandInvalid):
        await commands.list(limit=0)
    with pytest.raises(CommandNotFound):
        await commands.get("nope")
