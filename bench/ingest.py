"""Command ingest: the durable store against a raw aiosqlite baseline, measured in the same run.

    .venv/bin/python bench/ingest.py [--rows N] [--rounds R] [--submitters S]

(a) raw: aiosqlite, WAL + synchronous=FULL + foreign_keys, the commands table as migration 1
    creates it (same columns, constraints and indexes), one INSERT + commit() per row, awaited
    one after the other (two round trips to aiosqlite's thread per row);
(b) store, single submitter: `Commands.submit` in a loop. Each call returns only after its own
    COMMIT, and does more than (a): the idempotency check, the outbox row (trigger), the record
    read back. A lone submit sends its statement and the COMMIT in one round trip;
(c) store, S concurrent submitters (asyncio tasks): the same calls, group-committed (one
    transaction and one fsync per batch; the mean batch size is reported).

Idempotency keys are random (uuid4), as clients make them. (b) and (c) use separate databases so
that (b)'s table grows like (a)'s. Nothing trades durability for speed: all three keep
synchronous=FULL, so every acknowledged command is on disk. The machine is shared (2 cores,
other jobs): the three run in short alternating rounds and the medians are reported; ratios are
taken between medians of the same run (the medians of per-round ratios are printed as a check).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiosqlite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.ids import new_id
from agent.store.clock import now_ts
from agent.store.commands import Commands
from agent.store.database import Database
from agent.store.migrations import MIGRATIONS

RATIO_TARGET = 0.6
SPEEDUP_TARGET = 3.0
PARAMS = {"target": "bay-17", "speed": 0.8, "hoist": {"height_mm": 1200, "mode": "slow"}}
INSERT = (
    "INSERT INTO commands (id, source, idempotency_key, user, type, params, priority,"
    " not_after, state, created_at, updated_at, attempts)"
    " VALUES (?, 'api', ?, 'bench', 'move', ?, 5, NULL, 'queued', ?, ?, 0)"
)


def key() -> str:
    """An idempotency key as API clients make them: random (uuid4), so inserts into the
    unique (source, key) index land on random pages in all three measurements."""
    return uuid.uuid4().hex


async def open_raw(path: Path) -> aiosqlite.Connection:
    """The baseline connection: same pragmas as the store's writer, same table."""
    conn = await aiosqlite.connect(path)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA foreign_keys = ON")
    for statement in MIGRATIONS[0].statements:  # the commands table and its indexes
        await conn.execute(statement)
    await conn.commit()
    return conn


async def raw_round(conn: aiosqlite.Connection, rows: int) -> float:
    params = json.dumps(PARAMS, sort_keys=True, separators=(",", ":"))
    start = time.perf_counter()
    for _ in range(rows):
        at = now_ts()
        await conn.execute(INSERT, (new_id(), key(), params, at, at))
        await conn.commit()
    return rows / (time.perf_counter() - start)


async def single_round(commands: Commands, rows: int) -> float:
    start = time.perf_counter()
    for _ in range(rows):
        await commands.submit("api", key(), "move", PARAMS, user="bench")
    return rows / (time.perf_counter() - start)


async def concurrent_round(commands: Commands, rows: int, submitters: int) -> float:
    per_task = rows // submitters

    async def submitter(n: int) -> None:
        for _ in range(per_task):
            await commands.submit("api", key(), "move", PARAMS, user="bench")

    start = time.perf_counter()
    await asyncio.gather(*(submitter(n) for n in range(submitters)))
    return per_task * submitters / (time.perf_counter() - start)


async def run(rows: int, rounds: int, submitters: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="oht-bench-ingest-") as tmp:
        # (a) and (b) write tables that grow alike; (c) has its own store, so that its larger
        # volume does not slow (b) down (it only makes (c) itself a little more conservative).
        raw = await open_raw(Path(tmp) / "raw.db")
        single_db = await Database.open(Path(tmp) / "single")
        group_db = await Database.open(Path(tmp) / "group")
        single, group = Commands(single_db), Commands(group_db)
        try:
            # Warm-up: first pages, statement caches, the writer tasks.
            await raw_round(raw, 50)
            await single_round(single, 50)
            await concurrent_round(group, 200, submitters)
            samples: dict[str, list[float]] = {"raw": [], "single": [], "concurrent": []}
            for _ in range(rounds):
                samples["raw"].append(await raw_round(raw, rows))
                samples["single"].append(await single_round(single, rows))
                samples["concurrent"].append(await concurrent_round(group, rows * 3, submitters))
            stats = group_db.stats()
        finally:
            await single_db.close()
            await group_db.close()
            await raw.close()
    raw_rate = statistics.median(samples["raw"])
    single = statistics.median(samples["single"])
    concurrent = statistics.median(samples["concurrent"])
    ratio = single / raw_rate
    speedup = concurrent / single
    # Rounds are short and alternate, so neighbours share the machine's mood; the medians of
    # the per-round ratios are reported too, as a check on the ratio of medians.
    paired_ratio = statistics.median(s / r for s, r in zip(samples["single"], samples["raw"], strict=True))
    paired_speedup = statistics.median(c / s for c, s in zip(samples["concurrent"], samples["single"], strict=True))
    return {
        "bench": "ingest",
        "raw_rows_per_s": round(raw_rate, 1),
        "store_single_per_s": round(single, 1),
        "store_concurrent_per_s": round(concurrent, 1),
        "ratio_vs_raw": round(ratio, 3),
        "group_speedup": round(speedup, 3),
        "paired_ratio_vs_raw": round(paired_ratio, 3),
        "paired_group_speedup": round(paired_speedup, 3),
        "ratio_target": RATIO_TARGET,
        "speedup_target": SPEEDUP_TARGET,
        "targets_met": ratio >= RATIO_TARGET and speedup >= SPEEDUP_TARGET,
        "rows_per_round": rows,
        "concurrent_rows_per_round": rows * 3,
        "rounds": rounds,
        "submitters": submitters,
        "samples_per_s": {k: [round(v, 1) for v in vals] for k, vals in samples.items()},
        "concurrent_batches": stats["batches"],
        "concurrent_mean_batch": round(stats["units"] / max(1, stats["batches"]), 2),
        "concurrent_largest_batch": stats["largest_batch"],
        "synchronous": "FULL",
        "journal_mode": "WAL",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="rows per round for (a) and (b)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--submitters", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(run(args.rows, args.rounds, args.submitters))
    print(f"{'measure':<34}{'per second':>12}")
    print(f"{'(a) raw INSERT+COMMIT':<34}{result['raw_rows_per_s']:>12,.0f}")
    print(f"{'(b) store, 1 submitter':<34}{result['store_single_per_s']:>12,.0f}")
    print(f"{'(c) store, ' + str(args.submitters) + ' submitters':<34}{result['store_concurrent_per_s']:>12,.0f}")
    print(
        f"ratio b/a = {result['ratio_vs_raw']:.2f} (target >= {RATIO_TARGET}),"
        f" speedup c/b = {result['group_speedup']:.2f} (target >= {SPEEDUP_TARGET}),"
        f" mean batch in (c) {result['concurrent_mean_batch']}, targets met: {result['targets_met']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
