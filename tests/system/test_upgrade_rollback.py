"""Upgrade to the next release and roll back to this one, each release a real process on its own tree.

Release N is this source tree. Release N+1 is a copy of it with one more migration appended to
its migrations.py, as the next release will add one. With release N the test makes commands
(acknowledged: `submit` returned, so committed); release N+1's core starts on the same data
directory, migrates it and takes its backup; release N's core then refuses the newer database;
`oht-agent db restore` of that backup (release N's CLI) brings every acknowledged command back and
release N's core starts again. A release whose migration fails leaves the database at the old
version, which release N still opens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.store.migrations import LATEST_VERSION

REPO = Path(__file__).resolve().parents[2]
NEXT = LATEST_VERSION + 1
STARTED = "core socket listening"  # the core's log line once the store is open and the link serves
# What the next release adds, as a real one would: a table, and a row in it.
NEXT_MIGRATION = [
    "CREATE TABLE next_release_notes (id INTEGER PRIMARY KEY, note TEXT NOT NULL)",
    "INSERT INTO next_release_notes (note) VALUES ('written by the next release')",
]
# A migration that fails at its second step: the first step must not stay behind.
BROKEN_MIGRATION = [
    "CREATE TABLE next_release_notes (id INTEGER PRIMARY KEY)",
    "INSERT INTO no_such_table VALUES (1)",
]

SUBMIT = """
import asyncio, json, sys
from agent.store import Commands, Database

async def main(data, n):
    db = await Database.open(data)
    try:
        for i in range(n):
            record, _ = await Commands(db).submit("cli", f"upgrade-{i}", "stop", {"i": i, "note": "release N"})
            print(json.dumps({"id": record.id, "params": record.params}), flush=True)  # acknowledged
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

READ = """
import asyncio, json, sys
from agent.store import Database

async def main(data):
    db = await Database.open(data)
    try:
        rows = await db.read(lambda c: c.execute_fetchall("SELECT id, params FROM commands ORDER BY seq"))
        tables = await db.read(lambda c: c.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'"))
        print(json.dumps({
            "schema_version": db.report.schema_version,
            "commands": [{"id": r[0], "params": json.loads(r[1])} for r in rows],
            "tables": sorted(r[0] for r in tables),
        }))
    finally:
        await db.close()

asyncio.run(main(sys.argv[1]))
"""


def shipped_packages() -> list[str]:
    """The top-level packages a release ships: pyproject's `packages.find` include list."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]


def release_with_migration(dest: Path, statements: list[str]) -> Path:
    """A copy of this tree whose migrations.py appends migration NEXT made of `statements`."""
    ignore = shutil.ignore_patterns("__pycache__")
    for part in shipped_packages():
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    shutil.copytree(REPO / "config" / "profiles", dest / "config" / "profiles")
    path = dest / "agent" / "store" / "migrations.py"
    source = path.read_text()
    body = "".join(f"        {s!r},\n" for s in statements)
    added = f"_V{NEXT}_NEXT_RELEASE = Migration(\n    {NEXT},\n    'next release',\n    (\n{body}    ),\n)\n\n"
    source, defined = re.subn(r"^MIGRATIONS: tuple", lambda m: added + m[0], source, count=1, flags=re.M)
    source, listed = re.subn(r"\n\)\n\nLATEST_VERSION = ", lambda m: f"\n    _V{NEXT}_NEXT_RELEASE," + m[0], source)
    assert defined == listed == 1, "migrations.py no longer has the shape this test edits"
    path.write_text(source)
    return dest


class Release:
    """One release's tree, run as `python -m agent ...` with PYTHONPATH set to it."""

    def __init__(self, tree: Path, config: Path) -> None:
        self.tree, self.config = tree, config
        self.env = {**os.environ, "PYTHONPATH": str(tree)}

    def python(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=self.tree, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.python("-m", "agent", *args, "--config", str(self.config))

    def submit(self, data: Path, n: int) -> list[dict[str, Any]]:
        done = self.python("-c", SUBMIT, str(data), str(n))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def read(self, data: Path) -> dict[str, Any]:
        done = self.python("-c", READ, str(data))
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def core(self, log: Path, timeout: float = 20) -> tuple[int, str]:
        """Start the core; once it serves (or ends by itself), SIGTERM it. (exit code, its log)."""
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "core", "--config", str(self.config)],
                cwd=self.tree, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and STARTED not in log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return code, log.read_text()


@pytest.fixture
def data_and_config(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nid = "upgrade-test"\ndata_dir = "{data}"\n'
        f'[bus]\nport = "{tmp_path / "no-serial-port"}"\n'  # the core starts and keeps retrying the port
        f'[core]\nsocket = "{tmp_path / "core.sock"}"\n'
    )
    return data, config


def test_upgrade_then_roll_back_to_the_previous_release_with_its_backup(
    tmp_path: Path, data_and_config: tuple[Path, Path]
) -> None:
    data, config = data_and_config
    old = Release(REPO, config)
    new = Release(release_with_migration(tmp_path / "release-next", NEXT_MIGRATION), config)
    acknowledged = old.submit(data, 5)
    assert len(acknowledged) == 5

    code, log = new.core(tmp_path / "next.log")
    assert code == 0 and STARTED in log, log
    backup = re.search(
        rf"migrating the database from schema version {LATEST_VERSION} to {NEXT}; backup taken before: (\S+)", log
    )
    assert backup is not None, log

    # The previous release refuses the migrated database, saying why.
    check = old.cli("db", "check")
    assert check.returncode == 1
    assert f"schema version {NEXT}; this oht-agent knows up to {LATEST_VERSION}" in check.stdout
    code, log = old.core(tmp_path / "refused.log")
    assert code != 0 and STARTED not in log
    assert "STORE_SCHEMA_NEWER" in log, log

    # Rolling back: pick the backup from the list, restore it with the previous release's CLI.
    listed = old.cli("db", "backups")
    assert listed.returncode == 0, listed.stderr
    backups = json.loads(listed.stdout)["backups"]
    assert [(b["path"], b["from_version"], b["to_version"], b["restorable"]) for b in backups] == [
        (backup[1], LATEST_VERSION, NEXT, True)
    ]
    restored = old.cli("db", "restore", backup[1])
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["schema_version"] == LATEST_VERSION

    after = old.read(data)
    assert after["schema_version"] == LATEST_VERSION
    assert after["commands"] == acknowledged  # every acknowledged command, ids and payloads
    assert "next_release_notes" not in after["tables"]
    assert old.cli("db", "check").returncode == 0
    code, log = old.core(tmp_path / "again.log")
    assert code == 0 and STARTED in log, log


def test_a_release_whose_migration_fails_leaves_the_database_to_the_previous_one(
    tmp_path: Path, data_and_config: tuple[Path, Path]
) -> None:
    data, config = data_and_config
    old = Release(REPO, config)
    broken = Release(release_with_migration(tmp_path / "release-broken", BROKEN_MIGRATION), config)
    acknowledged = old.submit(data, 3)

    code, log = broken.core(tmp_path / "broken.log")
    assert code != 0 and STARTED not in log
    assert "no such table: no_such_table" in log, log

    after = old.read(data)
    assert after["schema_version"] == LATEST_VERSION
    assert after["commands"] == acknowledged
    assert "next_release_notes" not in after["tables"]
