"""The audit chain with two writing processes (the core and the gateway append to one chain): no
row is refused as "not extending the chain" and the chain verifies, however their writes interleave."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from agent.store.audit import Audit, AuditEntry, verify_chain
from agent.store.database import Database
from tests.second_writer import start_in_step

ROWS = 300

CHILD = textwrap.dedent("""
    import asyncio, sys
    from agent.store.audit import AuditEntry, append_in
    from agent.store.database import Database

    async def main(path, rows):
        db = await Database.open(path, attach=True)
        print("ready", flush=True)
        sys.stdin.readline()  # both processes start appending at the same moment
        try:
            for i in range(rows):
                entry = AuditEntry(actor="child", auth_method="local", action=f"child.{i}")
                await db.write(lambda conn, entry=entry: append_in(conn, entry))
        finally:
            await db.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


@pytest.mark.timeout(120)
async def test_two_processes_append_to_one_chain_without_losing_a_row(tmp_path: Path) -> None:
    db = await Database.open(tmp_path)
    try:
        child = await start_in_step(CHILD, tmp_path, ROWS)
        audit = Audit(db)
        failures = []
        for i in range(ROWS):
            try:
                await audit.append(AuditEntry(actor="parent", auth_method="local", action=f"parent.{i}"))
            except Exception as exc:
                failures.append(repr(exc))
        _, err = await asyncio.wait_for(child.communicate(), 100)
        assert child.returncode == 0, err.decode()[-3000:]
        assert not failures, f"{len(failures)} appends refused, first: {failures[0]}"
        result = await verify_chain(db)
        assert result.ok, result
        rows = await audit.list(limit=1000)
        assert sum(r.actor == "parent" for r in rows) == ROWS and sum(r.actor == "child" for r in rows) == ROWS
    finally:
        await db.close()
