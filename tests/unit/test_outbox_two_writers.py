"""Two processes write the outbox (the core and the gateway): every stream is still numbered
1, 2, 3, ... without a gap or a repeat, and each process's records keep their order."""

from __future__ import annotations

import asyncio
import textwrap
from itertools import pairwise
from pathlib import Path

import pytest

from agent.store.commands import Commands
from agent.store.database import Database
from agent.store.outbox import Outbox
from tests.second_writer import start_in_step

ROWS = 150
KINDS = ("event", "audit", "telemetry", "alarm")

CHILD = textwrap.dedent("""
    import asyncio, sys
    from agent.store.database import Database
    from agent.store.outbox import Outbox

    async def main(path, rows):
        db = await Database.open(path, attach=True)
        print("ready", flush=True)
        sys.stdin.readline()  # both processes start writing at the same moment
        try:
            box = Outbox(db)
            for i in range(rows):  # one transaction each: the two processes take turns at the lock
                await box.add(("event", "audit", "telemetry", "alarm")[i % 4], {"by": "child", "i": i})
        finally:
            await db.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


@pytest.mark.timeout(120)
async def test_two_processes_number_every_stream_gap_free(tmp_path: Path) -> None:
    db = await Database.open(tmp_path)
    try:
        child = await start_in_step(CHILD, tmp_path, ROWS)
        box, commands = Outbox(db), Commands(db)
        child_done = asyncio.create_task(child.wait())
        written = 0
        while written < ROWS or not child_done.done():  # keep writing for as long as the child does
            await box.add(KINDS[written % 4], {"by": "parent", "i": written})
            if written % 3 == 0:
                await commands.submit("api", f"k{written}", "stop", {}, user="ann")  # 'command' rows, by trigger
            written += 1
        await asyncio.wait_for(child_done, 100)
        assert child.returncode == 0, (await child.stderr.read()).decode()[-3000:]  # type: ignore[union-attr]
        backlog = await box.backlog()
        for stream in ("results", "alarms", "events", "audit", "telemetry"):
            records = await box.batch(stream, 0, 1000)
            assert [r.seq for r in records] == list(range(1, len(records) + 1)), stream
            assert backlog[stream].last_seq == backlog[stream].unacked == len(records)
            for who in ("parent", "child"):
                mine = [r.payload["i"] for r in records if isinstance(r.payload, dict) and r.payload.get("by") == who]
                assert mine == sorted(mine), f"{stream}: {who}'s records out of their order"
        assert backlog["results"].last_seq == (written + 2) // 3
        assert sum(b.last_seq for b in backlog.values()) == ROWS + written + (written + 2) // 3
        order = await db.read(
            lambda c: c.execute_fetchall(
                "SELECT json_extract(payload, '$.by') FROM outbox WHERE kind <> 'command' ORDER BY seq"
            )
        )
        writers = [r[0] for r in order]
        assert sum(a != b for a, b in pairwise(writers)) >= 1, "the two processes never interleaved"
    finally:
        await db.close()
