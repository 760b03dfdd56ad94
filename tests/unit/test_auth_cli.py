"""`oht-agent user ...`, `audit verify`, `tls fingerprint` through the real command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli
from agent.store.lock import DataDirLock

REPO = Path(__file__).resolve().parents[2]
PW = "correct horse battery"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nid = "oht-test"\ndata_dir = "{tmp_path / "data"}"\n\n[bus]\nport = "/dev/null"\n')
    return path


def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_lifecycle(cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    code, out, _ = run(monkeypatch, capsys, "user", "list", "--config", c)
    assert code == 0 and "no users yet" in out
    code, out, err = run(
        monkeypatch,
        capsys,
        "user",
        "add",
        "root-admin",
        "--role",
        "admin",
        "--password-stdin",
        "--config",
        c,
        stdin=PW + "\n",
    )
    assert code == 0, err
    assert "created user root-admin with role admin" in out
    code, _, err = run(
        monkeypatch,
        capsys,
        "user",
        "add",
        "ROOT-ADMIN",
        "--role",
        "viewer",
        "--password-stdin",
        "--config",
        c,
        stdin=PW,
    )
    assert code == 1 and "USER_EXISTS" in err
    code, _, _ = run(
        monkeypatch, capsys, "user", "add", "tech", "--role", "technician", "--password-stdin", "--config", c, stdin=PW
    )
    assert code == 0
    code, out, _ = run(monkeypatch, capsys, "user", "list", "--config", c)
    assert code == 0 and "root-admin" in out and "technician" in out and "active" in out
    assert PW not in out and "scrypt" not in out
    code, out, _ = run(
        monkeypatch,
        capsys,
        "user",
        "passwd",
        "tech",
        "--password-stdin",
        "--config",
        c,
        stdin="another long password\n",
    )
    assert code == 0 and "password of tech set" in out
    # On the carriage an admin's own password is set without the current one (the API refuses that).
    code, out, _ = run(
        monkeypatch,
        capsys,
        "user",
        "passwd",
        "root-admin",
        "--password-stdin",
        "--config",
        c,
        stdin="a new admin password\n",
    )
    assert code == 0 and "password of root-admin set" in out
    code, out, _ = run(monkeypatch, capsys, "user", "disable", "tech", "--config", c)
    assert code == 0 and "disabled" in out
    code, _, err = run(monkeypatch, capsys, "user", "disable", "root-admin", "--config", c)
    assert code == 1 and "USER_LAST_ADMIN" in err
    code, out, _ = run(monkeypatch, capsys, "audit", "verify", "--config", c)
    assert code == 0 and "5 rows" in out  # two users added, two passwords set, one disabled


def test_short_password_is_refused_clearly(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        monkeypatch,
        capsys,
        "user",
        "add",
        "bob",
        "--role",
        "viewer",
        "--password-stdin",
        "--config",
        str(cfg),
        stdin="tooshort\n",
    )
    assert code == 1
    assert "PASSWORD_REJECTED" in err and "at least 12 characters" in err and "hint:" in err


def test_prompted_passwords_must_match(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([PW, PW + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code, _, err = run(monkeypatch, capsys, "user", "add", "bob", "--role", "viewer", "--config", str(cfg))
    assert code == 1 and "differ" in err
    answers = iter([PW, PW])
    code, _, err = run(monkeypatch, capsys, "user", "add", "bob", "--role", "viewer", "--config", str(cfg))
    assert code == 0, err


def test_user_commands_refuse_while_the_daemon_holds_the_data_dir(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with DataDirLock(tmp_path / "data"):
        code, _, err = run(
            monkeypatch,
            capsys,
            "user",
            "add",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
            "--config",
            str(cfg),
            stdin=PW,
        )
    assert code == 1 and "DATA_DIR_LOCKED" in err


def test_unlock_works_beside_the_running_daemon(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(cfg)
    code, _, err = run(
        monkeypatch, capsys, "user", "add", "tech", "--role", "technician", "--password-stdin", "--config", c, stdin=PW
    )
    assert code == 0, err
    with DataDirLock(tmp_path / "data"):  # the daemon holds the data directory
        code, out, err = run(monkeypatch, capsys, "user", "unlock", "tech", "--config", c)
        assert code == 0, err
        assert "failed logins of tech cleared" in out
        code, _, err = run(monkeypatch, capsys, "user", "unlock", "nobody", "--config", c)
        assert code == 1 and "USER_NOT_FOUND" in err
    code, out, _ = run(monkeypatch, capsys, "audit", "verify", "--config", c)
    assert code == 0 and "2 rows" in out  # the user added and the one unlock


def test_unknown_role_is_refused_by_the_parser(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run(monkeypatch, capsys, "user", "add", "bob", "--role", "root", "--config", str(cfg))
    assert info.value.code == 2


def test_tls_fingerprint(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.api.tls import ensure_certificate

    code, _, err = run(monkeypatch, capsys, "tls", "fingerprint", "--config", str(cfg))
    assert code == 1 and "plain HTTP" in err
    files = ensure_certificate(tmp_path / "data", "0.0.0.0")
    code, out, _ = run(monkeypatch, capsys, "tls", "fingerprint", "--config", str(cfg))
    assert code == 0 and files.fingerprint in out


def test_the_installed_command_adds_the_first_admin(cfg: Path) -> None:
    """The real entry point in a separate process, password on stdin (as an install script would)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    add = subprocess.run(
        [sys.executable, "-m", "agent", "user", "add", "admin", "--role", "admin", "--password-stdin",
         "--config", str(cfg)],
        input=PW + "\n", capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert PW not in add.stdout + add.stderr
    verify = subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0 and "1 rows" in verify.stdout
