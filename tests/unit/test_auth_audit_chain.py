"""The audit log: append-only by trigger, hash-chained, tampering found by verify and the CLI."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import cli
from agent.store import jsoncodec
from agent.store.audit import Audit, AuditEntry, params_digest, redact, verify_chain
from agent.store.database import DB_NAME, Database
from agent.store.errors import StoreError

ROWS = 6


@pytest.fixture
async def filled(tmp_path: Path) -> AsyncIterator[Path]:
    """A closed database with ROWS audit rows; yields the data dir."""
    data = tmp_path / "data"
    db = await Database.open(data)
    audit = Audit(db)
    for i in range(ROWS):
        await audit.append(AuditEntry(actor=f"user{i}", auth_method="session", action="test.action", target=str(i)))
    await db.close()
    yield data


def _config(tmp_path: Path, data: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "oht-test"\ndata_dir = "{data}"\n\n[bus]\nport = "/dev/null"\n')
    return cfg


def _tamper(data: Path, *statements: str) -> None:
    """What someone with shell access could do: drop the triggers, then edit."""
    conn = sqlite3.connect(data / DB_NAME, isolation_level=None)
    for trigger in ("audit_no_update", "audit_no_delete", "audit_head_forward_only", "audit_head_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for statement in statements:
        conn.execute(statement)
    conn.close()


async def _verify(data: Path):  # type: ignore[no-untyped-def]
    db = await Database.open(data)
    try:
        return await verify_chain(db)
    finally:
        await db.close()


async def _cli_verify(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`oht-agent audit verify` (in a thread: it runs its own event loop)."""
    args = ["audit", "verify", "--config", str(_config(tmp_path, data))]
    code = await asyncio.to_thread(cli.main, args)
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_intact_chain_verifies(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = await _verify(filled)
    assert result.ok and result.rows == ROWS and result.first_bad_seq is None
    code, text = await _cli_verify(tmp_path, filled, capsys)
    assert code == 0 and f"{ROWS} rows" in text


async def test_rows_chain_and_outbox_copy(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "d")
    try:
        audit = Audit(db)
        first = await audit.append(AuditEntry(actor="a", auth_method="none", action="x"))
        second = await audit.append(AuditEntry(actor="b", auth_method="none", action="y", result="denied", code="NOPE"))
        assert first.seq == 1 and first.prev_hash == "0" * 64
        assert second.prev_hash == first.row_hash and second.seq == 2
        rows = await db.read(lambda c: c.execute_fetchall("SELECT kind, payload FROM outbox ORDER BY seq"))
        shipped = [jsoncodec.loads(r[1]) for r in rows if r[0] == "audit"]
        assert [s["row_hash"] for s in shipped] == [first.row_hash, second.row_hash]
    finally:
        await db.close()


async def test_triggers_refuse_update_and_delete(filled: Path) -> None:
    db = await Database.open(filled)
    try:
        for sql in (
            "UPDATE audit SET actor = 'mallory' WHERE seq = 2",
            "DELETE FROM audit WHERE seq = 6",
            "DELETE FROM audit_head",
        ):
            with pytest.raises(StoreError, match=r"append-only|cannot be deleted"):
                await db.write(lambda conn, sql=sql: conn.execute(sql))
        assert (await verify_chain(db)).ok
    finally:
        await db.close()


async def test_a_row_that_does_not_extend_the_chain_is_refused(filled: Path) -> None:
    db = await Database.open(filled)
    try:
        with pytest.raises(StoreError, match="does not extend the chain"):
            await db.write(
                lambda conn: conn.execute(
                    "INSERT INTO audit (seq, id, at, actor, auth_method, action, result, prev_hash, row_hash)"
                    " VALUES (99, 'x', 'now', 'm', 'none', 'forged', 'ok', ?, ?)",
                    ("0" * 64, "1" * 64),
                )
            )
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("statements", "bad_seq", "words"),
    [
        (["UPDATE audit SET actor = 'mallory' WHERE seq = 3"], 3, "edited"),
        (["UPDATE audit SET target = '99', at = '2020-01-01T00:00:00.000000Z' WHERE seq = 1"], 1, "edited"),
        (["DELETE FROM audit WHERE seq = 4"], 4, "missing"),
        (  # swap the contents of rows 2 and 3 (seq kept): a reordering
            [
                "UPDATE audit SET seq = -2 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = -2",
            ],
            2,
            "",
        ),
        (["DELETE FROM audit WHERE seq >= 5"], 5, "cut off"),
    ],
)
async def test_tampering_is_found(
    filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], statements: list[str], bad_seq: int, words: str
) -> None:
    _tamper(filled, *statements)
    result = await _verify(filled)
    assert not result.ok and result.first_bad_seq == bad_seq, result
    assert words in result.reason
    code, text = await _cli_verify(tmp_path, filled, capsys)
    assert code == 1 and f"first bad row {bad_seq}" in text


def _rows(data: Path) -> list[dict[str, object]]:
    from agent.store.audit import AuditRecord

    conn = sqlite3.connect(data / DB_NAME)
    conn.row_factory = sqlite3.Row
    rows = [AuditRecord.from_row(r).to_dict() for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
    conn.close()
    return rows


async def test_rehashed_edit_with_the_key_is_found_at_the_next_row(filled: Path) -> None:
    """Even someone who has the key, edits a row AND recomputes its MAC breaks the link to the next row."""
    from agent.store import chain_key
    from agent.store.audit import row_hash

    row = _rows(filled)[1]
    row["actor"] = "mallory"
    key = chain_key.load(filled)
    _tamper(
        filled,
        f"UPDATE audit SET actor = 'mallory', row_hash = '{row_hash(str(row['prev_hash']), row, key)}' WHERE seq = 2",
    )
    result = await _verify(filled)
    assert not result.ok and result.first_bad_seq == 3 and "row 2" in result.reason


async def test_a_rewrite_of_the_whole_chain_without_the_key_is_found(
    filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attack a plain hash chain cannot see: every row re-hashed in order and the head moved
    along. Without the key (it lives beside the database, not in it) the first row fails."""
    from agent.store.audit import GENESIS_HASH, row_hash

    prev, statements = GENESIS_HASH, []
    for row in _rows(filled):
        row["actor"] = "mallory"
        new_hash = row_hash(prev, row)  # SHA-256: all one can compute without the key
        statements.append(
            f"UPDATE audit SET actor = 'mallory', prev_hash = '{prev}', row_hash = '{new_hash}'"
            f" WHERE seq = {row['seq']}"
        )
        prev = new_hash
    statements.append(f"UPDATE audit_head SET last_hash = '{prev}' WHERE id = 1")
    _tamper(filled, *statements)
    result = await _verify(filled)
    assert not result.ok and result.first_bad_seq == 1 and result.keyed_from == 1
    code, text = await _cli_verify(tmp_path, filled, capsys)
    assert code == 1 and "AUDIT_CHAIN_BROKEN" in text


async def test_a_log_older_than_its_key_verifies_and_records_the_key(tmp_path: Path) -> None:
    """A release before the key wrote plain SHA-256 rows: they still verify, the key covers what
    follows, and its creation is itself a row of the log."""
    from agent.store import chain_key

    data = tmp_path / "data"
    async with await Database.open(data) as db:
        for i in range(3):
            await Audit(db).append(AuditEntry(actor=f"u{i}", auth_method="session", action="old.action"))
    (data / chain_key.KEY_FILE).unlink()
    # Re-hash the three rows as the release before the key wrote them (plain SHA-256).
    from agent.store.audit import GENESIS_HASH, row_hash

    prev, statements = GENESIS_HASH, []
    for row in _rows(data):
        new_hash = row_hash(prev, row)
        statements.append(f"UPDATE audit SET prev_hash = '{prev}', row_hash = '{new_hash}' WHERE seq = {row['seq']}")
        prev = new_hash
    statements.append(f"UPDATE audit_head SET last_hash = '{prev}' WHERE id = 1")
    _tamper(data, *statements)
    async with await Database.open(data) as db:
        await Audit(db).append(AuditEntry(actor="u9", auth_method="session", action="new.action"))
        result = await verify_chain(db)
        actions = [r.action for r in await Audit(db).list()]
    assert result.ok and result.rows == 5 and result.keyed_from == 4
    assert actions == ["old.action"] * 3 + ["audit.key_created", "new.action"]


async def test_cli_verify_works_while_the_database_is_open_elsewhere(
    filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Verification only reads, so it does not need the daemon to stop (no data-dir lock)."""
    from agent.store.lock import DataDirLock

    with DataDirLock(filled):
        code, text = await _cli_verify(tmp_path, filled, capsys)
    assert code == 0, text


def test_params_digest_drops_secrets() -> None:
    a = {"username": "bob", "password": "hunter2hunter2", "nested": {"api_key": "oak_x", "token": "t", "n": 1}}
    b = {"username": "bob", "password": "something-else", "nested": {"api_key": "oak_y", "token": "u", "n": 1}}
    assert redact(a) == {"username": "bob", "nested": {"n": 1}}
    assert params_digest(a) == params_digest(b)
    assert params_digest({"username": "eve"}) != params_digest(a)
    assert params_digest(None) is None
