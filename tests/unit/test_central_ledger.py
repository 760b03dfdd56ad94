"""The central ledger's keys and its use by several consumers (processes) on one database file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from central.ledger import Ledger
from tests.property.test_central_ledger import AGENT, record

REPO = Path(__file__).resolve().parents[2]


def test_a_second_record_under_a_stored_key_is_a_conflict_and_the_first_stays() -> None:
    ledger = Ledger(":memory:", consumer="unit")
    assert ledger.commit([record("results", 1)]).stored == 1
    other = record("results", 1, rid=str(uuid.uuid4()))
    done = ledger.commit([other, record("results", 1)])
    assert (done.stored, done.duplicates, done.conflicts) == (0, 1, (other,))
    assert done.acks == {AGENT: {"results": 1}}


def test_consumers_on_one_database_file_compute_the_prefix_over_each_others_records(tmp_path: Path) -> None:
    """Two ledgers (two consumers) commit interleaved halves of one stream at the same time."""
    db = tmp_path / "central.db"
    ledgers = [Ledger(db, consumer="a"), Ledger(db, consumer="b")]
    errors: list[BaseException] = []

    def run(ledger: Ledger, seqs: list[int]) -> None:
        try:
            for seq in seqs:
                ledger.commit([record("results", seq)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ledgers[i], list(range(1 + i, 201, 2)))) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert ledgers[0].acked(AGENT, "results") == ledgers[1].acked(AGENT, "results") == 200
    for ledger in ledgers:
        ledger.close()


OPEN_TOGETHER = """
import os, sys, time
from central.ledger import Ledger
failures = 0
for attempt in range(8):
    db = os.path.join(sys.argv[1], f"new-{attempt}.db")
    at = time.time() + 0.02
    children = []
    for name in ("a", "b"):
        pid = os.fork()
        if pid == 0:
            while time.time() < at:
                pass
            try:
                Ledger(db, consumer=name).close()
            except Exception as exc:
                print(exc, flush=True)
                os._exit(1)
            os._exit(0)
        children.append(pid)
    failures += sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
print("failures", failures)
"""


def test_consumers_starting_together_on_a_new_database_both_open_it(tmp_path: Path) -> None:
    """Two processes opening a new file at once: SQLite answers the second one's PRAGMA journal_mode
    = WAL with "database is locked" at once, without waiting out the busy timeout."""
    out = subprocess.run(
        [sys.executable, "-c", OPEN_TOGETHER, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("failures 0"), out.stdout
