"""`oht-agent db check | backup | restore` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.store.lock import DataDirLock


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "db-test"\ndata_dir = "{tmp_path / "data"}"\n[bus]\nport = "/dev/null"\n')
    return cfg


async def make_db(data: Path, n: int) -> None:
    from agent.store import Commands, Database

    db = Database(data)
    await db.start()
    try:
        for i in range(n):
            await Commands(db).submit("cli", f"k{i}", "stop", {})
    finally:
        await db.close()


async def test_check_backup_restore(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    await make_db(data, 3)
    assert main(["db", "check", "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quick_check"] == "ok"
    copy = tmp_path / "copy.db"
    assert main(["db", "backup", str(copy), "--config", str(config)]) == 0
    capsys.readouterr()
    await make_db(data, 5)  # more commands after the backup
    with DataDirLock(data).acquire():  # as if the daemon were running
        assert main(["db", "restore", str(copy), "--config", str(config)]) == 1
        assert "DATA_DIR_LOCKED" in capsys.readouterr().err
    assert main(["db", "restore", str(copy), "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["db", "check", "--config", str(config)]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["counts"]["commands"] == 3  # back to the three commands of the backup, not eight
    assert after["ok"] is True


def test_restore_refuses_a_foreign_file(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"not a database at all" * 100)
    assert main(["db", "restore", str(bogus), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "hint:" in err
