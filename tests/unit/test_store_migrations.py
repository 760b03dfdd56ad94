"""Migrations: every past version upgrades to exactly the fresh schema, keeping its data."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import fields
from pathlib import Path

import aiosqlite
import pytest

from agent.auth.roles import ROLES
from agent.ids import new_id
from agent.store.clock import parse_ts
from agent.store.commands import CommandRecord
from agent.store.database import DB_NAME, Database
from agent.store.errors import ForeignDatabase, SchemaTooNew
from agent.store.migrations import (
    _COMMAND_JSON,
    APPLICATION_ID,
    LATEST_VERSION,
    MIGRATIONS,
    migrate,
)


def normalised_schema(path: Path) -> list[tuple[str, str, str]]:
    """(type, name, SQL with whitespace collapsed) of every schema object, sorted."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()
    return [(t, n, re.sub(r"\s+", " ", sql).strip()) for t, n, sql in rows]


async def build_at(path: Path, version: int) -> str | None:
    """A database at `version` (migrations 1..version), with one command if the table exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.create_function("oht_new_id", 0, new_id)  # as the writer registers it
        await migrate(conn, target=version)
        if version < 1:
            return None
        command_id = new_id()
        await conn.execute(
            "INSERT INTO commands (id, source, idempotency_key, type, params, priority, state,"
            " created_at, updated_at) VALUES (?, 'api', 'old', 'move', '{\"to\": 1}', 7,"
            " 'queued', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
            (command_id,),
        )
        return command_id
    finally:
        await conn.close()


def test_versions_are_contiguous_and_latest_is_last() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))
    assert LATEST_VERSION >= 2


@pytest.mark.parametrize("start", range(LATEST_VERSION))
async def test_upgrade_from_every_past_version_equals_fresh_install(tmp_path: Path, start: int) -> None:
    fresh = await Database.open(tmp_path / "fresh")
    await fresh.close()
    old = tmp_path / "old" / DB_NAME
    command_id = await build_at(old, start)
    db = await Database.open(old.parent)
    try:
        assert db.report is not None
        assert (db.report.migrated_from, db.report.schema_version) == (start, LATEST_VERSION)
        if command_id is not None:
            rows = await db.read(
                lambda conn: conn.execute_fetchall(
                    "SELECT idempotency_key, params, priority FROM commands WHERE id = ?",
                    (command_id,),
                )
            )
            assert [tuple(r) for r in rows] == [("old", '{"to": 1}', 7)]
    finally:
        await db.close()
    assert normalised_schema(old) == normalised_schema(tmp_path / "fresh" / DB_NAME)
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    conn.close()


async def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    await build_at(path, 1)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE outbox (x)")  # migration 2 will collide with this
    conn.commit()
    conn.close()
    before = normalised_schema(path)
    async with aiosqlite.connect(path, isolation_level=None) as conn2:
        with pytest.raises(sqlite3.OperationalError):
            await migrate(conn2)
        assert not conn2.in_transaction
    assert normalised_schema(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


async def test_newer_and_foreign_databases_are_not_touched(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("PRAGMA user_version = 1")  # a version, but not our application id
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    for path, error in ((newer, SchemaTooNew), (foreign, ForeignDatabase)):
        before = path.read_bytes()
        async with aiosqlite.connect(path, isolation_level=None) as c:
            with pytest.raises(error):
                await migrate(c)
        assert path.read_bytes() == before


def test_outbox_trigger_payload_has_the_fields_of_command_record() -> None:
    """The triggers (frozen SQL in migration 2, recreated as they are by the rebuild in 5) and the
    dataclass must describe the same row."""
    triggers = [s for m in MIGRATIONS for s in m.statements if "TRIGGER commands_outbox" in s]
    assert len(triggers) == 4 and all(_COMMAND_JSON in t for t in triggers)
    pairs = re.findall(r"'(\w+)', (?:json\()?NEW\.(\w+)", _COMMAND_JSON)
    assert all(key == column for key, column in pairs)
    assert [key for key, _ in pairs] == [f.name for f in fields(CommandRecord)]


async def test_command_record_reads_columns_in_table_order(tmp_path: Path) -> None:
    db = await Database.open(tmp_path)
    try:
        rows = await db.read(lambda conn: conn.execute_fetchall("PRAGMA table_info(commands)"))
    finally:
        await db.close()
    assert [r[1] for r in rows] == [f.name for f in fields(CommandRecord)]


async def test_old_api_keys_get_their_creators_by_id_and_orphans_are_revoked(tmp_path: Path) -> None:
    """Keys from before creators were kept by id: filled from `created_by`; a key that the rules
    now refuse (made by a disabled user, by a revoked key, by nobody known) is revoked."""
    path = tmp_path / "old" / DB_NAME
    await build_at(path, 4)
    conn = sqlite3.connect(path)
    at = "2026-01-01T00:00:00.000000Z"
    for name, disabled in (("ada", None), ("dora", at)):
        conn.execute(
            "INSERT INTO users (id, name, role, password_hash, created_at, created_by, updated_at,"
            " password_changed_at, disabled_at) VALUES (?, ?, 'admin', 'scrypt$x', ?, 'cli:root', ?, ?, ?)",
            (f"u-{name}", name, at, at, at, disabled),
        )
    keys = {  # name: (created_by, revoked)
        "by-ada": ("ada", False),
        "by-ada's-key": ("oak_by-ada0000", False),
        "by-cli": ("cli:root", False),
        "by-dora": ("dora", False),
        "by-dora's-key": ("oak_by-dora000", False),
        "by-nobody": ("someone", False),
        "revoked": ("ada", True),
        "by-revoked": ("oak_revoked000", False),
    }
    for name, (created_by, revoked) in keys.items():
        conn.execute(
            "INSERT INTO api_keys (id, prefix, key_hash, name, role, created_by, created_at, revoked_at, revoked_by)"
            " VALUES (?, ?, ?, ?, 'admin', ?, ?, ?, ?)",
            (f"k-{name}", name.ljust(10, "0")[:10], "0" * 64, name, created_by, at,
             at if revoked else None, "ada" if revoked else None),
        )  # fmt: skip
    conn.commit()
    conn.close()
    db = await Database.open(path.parent)
    try:
        rows = await db.read(lambda c: c.execute_fetchall(
            "SELECT name, created_by_user_id, created_by_key_id, revoked_at, revoked_by FROM api_keys"))  # fmt: skip
    finally:
        await db.close()
    got = {r[0]: (r[1], r[2], r[4]) for r in rows}
    swept = "migration: made by a disabled user, a revoked key or an unknown creator"
    assert got == {
        "by-ada": ("u-ada", None, None),
        "by-ada's-key": (None, "k-by-ada", None),
        "by-cli": (None, None, None),
        "by-dora": ("u-dora", None, swept),
        "by-dora's-key": (None, "k-by-dora", swept),
        "by-nobody": (None, None, swept),
        "revoked": ("u-ada", None, "ada"),
        "by-revoked": (None, "k-revoked", swept),
    }
    for r in rows:
        if r[3] is not None:
            parse_ts(r[3])  # the stored timestamp format


async def test_v6_scopes_idempotency_keys_by_user_and_keeps_every_row(tmp_path: Path) -> None:
    """The rebuild of `commands` in v6, run by the real writer (foreign_keys=ON) over a v4 database
    with commands, their transitions and outbox rows: nothing is lost, renumbered or re-sent, and
    afterwards one key names one command per user."""
    from agent.store.commands import Commands

    path = tmp_path / DB_NAME
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.create_function("oht_new_id", 0, new_id)
        await conn.execute("PRAGMA foreign_keys = ON")
        await migrate(conn, target=4)
        for seq, source, user, key, state in (
            (3, "api", "ann", "k1", "succeeded"),
            (7, "api", "bob", "k2", "queued"),
            (9, "upstream", None, "k1", "cancelled"),
        ):
            await conn.execute(
                "INSERT INTO commands (seq, id, source, idempotency_key, user, type, params, state, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, 'move', '{\"to\": 1}', ?, '2026-01-01T00:00:00.000000Z',"
                " '2026-01-01T00:00:00.000000Z')",
                (seq, f"c{seq}", source, key, user, state),
            )
        for n, command_id in enumerate(("c3", "c7", None)):
            await conn.execute(
                "INSERT INTO state_transitions (id, at, from_state, to_state, event, reason, command_id)"
                " VALUES (?, '2026-01-01T00:00:01.000000Z', 'IDLE', 'MOVE', 'MOVE_COMMAND', NULL, ?)",
                (f"t{n}", command_id),
            )

    def dump() -> dict[str, list[tuple[object, ...]]]:
        c = sqlite3.connect(path)
        try:
            tables = {
                "commands": "*",
                "state_transitions": "*",
                "outbox": "seq, id, kind, created_at, payload",
            }  # v7 changes the rest
            return {t: c.execute(f"SELECT {cols} FROM {t} ORDER BY seq").fetchall() for t, cols in tables.items()}
        finally:
            c.close()

    before = dump()
    assert len(before["outbox"]) == 3  # one 'command' row per insert, by the v2 trigger
    db = await Database.open(tmp_path)
    try:
        assert db.report is not None and (db.report.migrated_from, db.report.schema_version) == (4, LATEST_VERSION)
        assert dump() == before  # same rows, same seq, no outbox row re-sent
        commands = Commands(db)
        repeat, created = await commands.submit("api", "k1", "move", {"to": 1}, user="ann")
        assert (repeat.id, created) == ("c3", False)  # an old row still answers its own user's repeat
        bobs, created = await commands.submit("api", "k1", "move", {"to": 1}, user="bob")
        assert created and bobs.id not in ("c3", "c7", "c9") and bobs.seq == 10
        upstream, created = await commands.submit("upstream", "k1", "move", {"to": 1})
        assert (upstream.id, created) == ("c9", False)
        await commands.cancel("c7")
        kinds = [
            r[0] for r in await db.read(lambda conn: conn.execute_fetchall("SELECT kind FROM outbox ORDER BY seq"))
        ]
        assert kinds == ["command"] * 4 + ["command_result"]  # both triggers are back
        assert list(await db.read(lambda conn: conn.execute_fetchall("PRAGMA foreign_key_check"))) == []
    finally:
        await db.close()


async def test_v7_numbers_each_stream_gap_free_in_write_order(tmp_path: Path) -> None:
    """A v6 outbox with rows of every kind, some already sent, migrated by the real writer: sent
    rows are gone (acknowledged under the old model), the rest are numbered per stream from 1 in
    the order they were written, and the counters continue from there."""
    from agent.store import streams
    from agent.store.outbox import Outbox

    path = tmp_path / DB_NAME
    kinds = ["command", "telemetry", "audit", "event", "command_result", "telemetry", "transition",
             "legacy_note", "audit", "command", "telemetry", "event", "command_result"]  # fmt: skip
    sent = {1, 5, 6}  # positions already delivered under the old model
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.create_function("oht_new_id", 0, new_id)
        await conn.execute("PRAGMA foreign_keys = ON")
        await migrate(conn, target=6)
        for n, kind in enumerate(kinds):
            await conn.execute(
                "INSERT INTO outbox (id, kind, created_at, payload, sent_at) VALUES (?, ?, ?, ?, ?)",
                (f"r{n}", kind, f"2026-01-01T00:00:{n:02d}.000000Z", f'{{"n": {n}}}',
                 "2026-01-01T00:01:00.000000Z" if n in sent else None),
            )  # fmt: skip
    db = await Database.open(tmp_path)
    try:
        rows = await db.read(
            lambda c: c.execute_fetchall("SELECT id, kind, stream, stream_seq FROM outbox ORDER BY seq")
        )
        numbered = {r[0]: (r[2], r[3]) for r in rows}
        expected: dict[str, tuple[str, int]] = {}
        per_stream: dict[str, int] = {}
        for n, kind in enumerate(kinds):
            if n in sent:
                continue
            stream = streams.KIND_STREAM.get(kind, "events")  # an unknown kind is kept, with the events
            per_stream[stream] = per_stream.get(stream, 0) + 1
            expected[f"r{n}"] = (stream, per_stream[stream])
        assert numbered == expected
        box = Outbox(db)
        backlog = await box.backlog()
        assert {s: (b.last_seq, b.acked_seq, b.unacked) for s, b in backlog.items() if b.last_seq} == {
            s: (n, 0, n) for s, n in per_stream.items()
        }
        await box.add("telemetry", {"after": "upgrade"})
        assert [r.seq for r in await box.batch("telemetry")] == list(range(1, per_stream["telemetry"] + 2))
        recount = await db.read(lambda c: c.execute_fetchall(
            "SELECT s.bytes, (SELECT coalesce(sum(length(CAST(payload AS BLOB)) + 128), 0) FROM outbox o"
            " WHERE o.stream = s.stream) FROM outbox_streams s"))  # fmt: skip
        assert all(kept == counted for kept, counted in recount)
    finally:
        await db.close()


@pytest.mark.parametrize("start", [0, 6, 7])
async def test_the_stream_declaration_and_the_database_agree(tmp_path: Path, start: int) -> None:
    """agent/store/streams.py is the one declaration: a fresh database, one upgraded from before
    streams, and one whose mapping an older release wrote (7: 'alarm' elsewhere, 'audit' missing,
    a retired kind) all hold exactly its mapping and streams once the core has started, and
    records go where it says."""
    from agent.store import streams
    from agent.store.outbox import Outbox

    path = tmp_path / DB_NAME
    await build_at(path, start)
    if start == 7:
        conn = sqlite3.connect(path)
        conn.execute("UPDATE outbox_kinds SET stream = 'events' WHERE kind = 'alarm'")
        conn.execute("DELETE FROM outbox_kinds WHERE kind = 'audit'")
        conn.execute("INSERT INTO outbox_kinds (kind, stream) VALUES ('retired', 'events')")
        conn.commit()
        conn.close()
    db = await Database.open(tmp_path)
    try:
        mapping = await db.read(lambda c: c.execute_fetchall("SELECT kind, stream FROM outbox_kinds"))
        names = await db.read(lambda c: c.execute_fetchall("SELECT stream FROM outbox_streams"))
        box = Outbox(db)
        await box.add("alarm", {"code": "E1"})
        await box.add("audit", {"who": "ann"})
        assert [r.kind for r in await box.batch("alarms")] == ["alarm"]
        assert [r.kind for r in await box.batch("audit")] == ["audit"]
    finally:
        await db.close()
    assert {k: s for k, s in mapping} == dict(streams.KIND_STREAM)
    assert {r[0] for r in names} == set(streams.STREAM_BY_NAME)


async def test_the_role_checks_in_the_schema_name_exactly_the_declared_roles(tmp_path: Path) -> None:
    """A past migration wrote the role list into the users and api_keys tables' CHECKs; a new role
    in `agent.auth.roles` without a migration would be refused by the database itself."""
    path = tmp_path / "roles.db"
    async with aiosqlite.connect(path) as conn:
        await migrate(conn)
        rows = await conn.execute_fetchall("SELECT name, sql FROM sqlite_master WHERE name IN ('users', 'api_keys')")
    checks = {name: re.search(r"role IN \(([^)]*)\)", sql) for name, sql in rows}
    assert set(checks) == {"users", "api_keys"}
    for name, match in checks.items():
        assert match is not None, name
        assert tuple(re.findall(r"'([a-z]+)'", match.group(1))) == ROLES, name
