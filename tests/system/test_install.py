"""`make install` / `make uninstall` (packaging/install.sh, docs/systemd.md "Installing and enabling")
into a staging root (DESTDIR): the files, modes, owners and accounts the docs promise, units that
systemd accepts there and that stay sandboxed, the technician's configuration never overwritten,
and an uninstall that keeps the data and the configuration.

To stay fast and offline, pip installs only the agent's wheel (`--no-deps --no-index`), built once
from a copy of the sources, into a venv made beforehand that sees this test environment's
dependencies through a `.pth` file: the script reuses an existing venv, as on a second install.
The installed `oht-agent` imports the agent from the staging venv, not from this repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.test_systemd_units import (
    ANALYZE,
    ANALYZE_ENV,
    HOST_UNIT_DIRS,
    MAX_EXPOSURE,
    SERVICES,
    SYSUSERS,
    TARGET,
    UNITS,
    run,
    verify_problems,
)

REPO = Path(__file__).resolve().parents[2]
VENV = Path("opt/oht-agent/.venv")
CONF = Path("etc/oht-agent/agent.toml")
DATA = Path("var/lib/oht-agent")
UNIT_DIR = Path("etc/systemd/system")
RULES = ("99-oht485.rules", "99-oht-core.rules")
EDIT = "\n# changed on the carriage: keep me\n"

pytestmark = [
    pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs systemd)"),
    pytest.mark.skipif(SYSUSERS is None, reason="systemd-sysusers is not installed (.ci/run installs systemd)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the install gives files to root:oht-agent; run as root (CI does)"),
    pytest.mark.timeout(120),
]


def make(action: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`make install DESTDIR=root` (or uninstall), which runs packaging/install.sh."""
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), action],
        capture_output=True,
        text=True,
        timeout=90,
        env=ANALYZE_ENV | {"DESTDIR": str(root), "PYTHON": sys.executable} | env,
    )


def ids(root: Path, table: str) -> dict[str, int]:
    """Name -> numeric id from the staging root's own /etc/passwd or /etc/group."""
    lines = (root / "etc" / table).read_text().splitlines()
    return {fields[0]: int(fields[2]) for fields in (line.split(":") for line in lines)}


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def installed_cli(root: Path) -> Path:
    (found,) = (root / VENV).glob("lib/python*/site-packages/agent/cli.py")
    return found


@dataclass
class Staged:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's wheel, built as `pip install .` builds it, from a copy (no build/ in the repository)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    skip = shutil.ignore_patterns(".venv", ".git", "tests", "bench", "build", "*.egg-info", "__pycache__", ".*cache")
    shutil.copytree(REPO, src, ignore=skip)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(src)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert built.returncode == 0, f"the agent's wheel did not build (its backend comes from the index):\n{built.stderr}"
    (found,) = work.glob("oht_agent-*.whl")
    return found


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Staged]:
    """One staging root: the host's system units (as on a carriage with systemd), a venv that sees
    the dependencies, then install, an edit of agent.toml, and install again."""
    root = tmp_path_factory.mktemp("destdir")
    host_units = next(d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists())
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    venv = root / VENV
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    site = venv / Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    (site / "test_dependencies.pth").write_text("\n".join(sysconfig.get_path(k) for k in ("purelib", "platlib")))
    pip = {"PACKAGE": str(wheel), "PIP_ARGS": "--no-deps --no-index"}

    first = make("install", root, **pip)
    assert first.returncode == 0, first.stdout + first.stderr
    with (root / CONF).open("a") as conf:
        conf.write(EDIT)
    with installed_cli(root).open("a") as cli:  # the second install must replace the agent, too
        cli.write("\n# stale\n")
    second = make("install", root, **pip)
    yield Staged(root, first, second)


# ----------------------------------------------------------------------------------- install
def test_files_land_where_documented_with_their_modes_and_owners(staged: Staged) -> None:
    root = staged.root
    gid = ids(root, "group")["oht-agent"]
    expected = {
        "usr/lib/sysusers.d/oht-agent.conf": (0, 0, 0o644),
        **{f"etc/udev/rules.d/{rule}": (0, 0, 0o644) for rule in RULES},
        **{f"{UNIT_DIR}/{unit}": (0, 0, 0o644) for unit in UNITS},
        "etc/oht-agent": (0, 0, 0o755),
        str(CONF): (0, gid, 0o640),
        "opt/oht-agent/docs/systemd.md": (0, 0, 0o644),
    }
    found = {path: owner_and_mode(root / path) for path in expected}
    assert found == expected
    for rule in RULES:
        assert (root / "etc/udev/rules.d" / rule).read_bytes() == (REPO / "systemd" / rule).read_bytes()
    for unit in UNITS:
        assert (root / UNIT_DIR / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    docs = sorted(p.name for p in (REPO / "docs").iterdir())
    assert sorted(p.name for p in (root / "opt/oht-agent/docs").iterdir()) == docs
    assert not (root / DATA).exists(), "the data directory is the core unit's StateDirectory=, not the installer's"


def test_the_accounts_exist_in_the_staging_roots_passwd(staged: Staged) -> None:
    users, groups = ids(staged.root, "passwd"), ids(staged.root, "group")
    passwd = {line.split(":")[0]: line.split(":") for line in (staged.root / "etc/passwd").read_text().splitlines()}
    for user in ("oht-core", "oht-gateway"):
        assert user in users
        assert int(passwd[user][3]) == groups["oht-agent"]
        assert passwd[user][5:] == ["/var/lib/oht-agent", "/usr/sbin/nologin"]


def test_installed_config_names_the_installed_profiles(staged: Staged) -> None:
    text = (staged.root / CONF).read_text()
    assert re.search(r'^profiles_dir = "/opt/oht-agent/profiles"$', text, re.M)
    shipped = sorted(p.name for p in (REPO / "config/profiles").glob("*.toml"))
    assert sorted(p.name for p in (staged.root / "opt/oht-agent/profiles").iterdir()) == shipped
    # Otherwise the default, line for line.
    default = (REPO / "config/agent.toml").read_text()
    assert text.removesuffix(EDIT) == default.replace('profiles_dir = ""', 'profiles_dir = "/opt/oht-agent/profiles"')


@pytest.mark.parametrize("name", UNITS)
def test_installed_units_verify_in_the_staging_root(staged: Staged, name: str) -> None:
    problems = verify_problems(staged.root, name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", SERVICES)
def test_installed_services_stay_sandboxed(staged: Staged, name: str) -> None:
    assert ANALYZE is not None
    result = run([ANALYZE, "security", "--no-pager", "--offline=true", f"--root={staged.root}", name])
    found = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+(?:\.\d+)?)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE


def test_the_target_is_enabled_from_multi_user(staged: Staged) -> None:
    link = staged.root / UNIT_DIR / "multi-user.target.wants" / TARGET
    assert link.is_symlink() and os.readlink(link) == f"/{UNIT_DIR}/{TARGET}"
    state = run(["systemctl", f"--root={staged.root}", "is-enabled", TARGET])
    assert state.stdout.strip() == "enabled"


def test_an_edited_config_survives_a_second_install(staged: Staged) -> None:
    assert staged.second.returncode == 0, staged.second.stdout + staged.second.stderr
    conf = staged.root / CONF
    assert conf.read_text().endswith(EDIT)
    new = conf.with_name("agent.toml.new")
    assert new.read_text() == conf.read_text().removesuffix(EDIT)
    assert owner_and_mode(new) == (0, ids(staged.root, "group")["oht-agent"], 0o640)
    assert "agent.toml.new" in staged.second.stdout
    assert "agent.toml.new" not in staged.first.stdout


def test_a_second_install_replaces_the_agent(staged: Staged) -> None:
    assert installed_cli(staged.root).read_text() == (REPO / "agent/cli.py").read_text()


def test_the_installed_entry_point_runs_from_the_staging_venv(staged: Staged, tmp_path: Path) -> None:
    venv = staged.root / VENV
    helped = subprocess.run(
        [str(venv / "bin/oht-agent"), "--help"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert helped.returncode == 0, helped.stderr
    assert "oht-agent core" in helped.stdout
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent; print(agent.__file__)"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr


def test_the_installed_agent_loads_the_installed_config_and_profiles(staged: Staged, tmp_path: Path) -> None:
    """`config check` on the installed agent.toml, its /opt paths moved into the staging root."""
    conf = tmp_path / "agent.toml"
    conf.write_text((staged.root / CONF).read_text().replace('"/opt/oht-agent/', f'"{staged.root}/opt/oht-agent/'))
    checked = subprocess.run(
        [str(staged.root / VENV / "bin/oht-agent"), "config", "check", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    shipped = len(list((REPO / "config/profiles").glob("*.toml")))
    assert f"{shipped} register profiles" in checked.stdout


def test_a_failing_step_exits_non_zero_and_names_it(tmp_path: Path) -> None:
    failed = make("install", tmp_path / "root", PYTHON=str(tmp_path / "no-such-python"))
    assert failed.returncode != 0
    assert "INSTALL_TOOL_MISSING" in failed.stderr and "no-such-python" in failed.stderr
    assert "hint:" in failed.stderr
    assert not (tmp_path / "root" / UNIT_DIR / TARGET).exists()


# --------------------------------------------------------------------------------- uninstall
@pytest.fixture(scope="module")
def uninstalled(staged: Staged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    """A copy of the installed root, with a database file in the data directory, uninstalled twice."""
    root = tmp_path_factory.mktemp("uninstall") / "root"
    shutil.copytree(staged.root, root, symlinks=True)
    (root / DATA).mkdir(parents=True)
    (root / DATA / "agent.db").write_text("the carriage's data")
    first = make("uninstall", root)
    second = make("uninstall", root)
    yield Staged(root, first, second)


def test_uninstall_removes_the_agent_and_keeps_data_and_config(uninstalled: Staged) -> None:
    root = uninstalled.root
    assert uninstalled.first.returncode == 0, uninstalled.first.stdout + uninstalled.first.stderr
    for unit in UNITS:
        assert not (root / UNIT_DIR / unit).exists()
    assert not (root / UNIT_DIR / "multi-user.target.wants" / TARGET).is_symlink()
    for rule in RULES:
        assert not (root / "etc/udev/rules.d" / rule).exists()
    assert not (root / "usr/lib/sysusers.d/oht-agent.conf").exists()
    assert not (root / "opt/oht-agent").exists()
    assert (root / DATA / "agent.db").read_text() == "the carriage's data"
    assert (root / CONF).read_text().endswith(EDIT)
    assert f"kept the data directory {root / DATA}" in uninstalled.first.stdout
    assert f"kept the configuration {root / 'etc/oht-agent'}" in uninstalled.first.stdout


def test_uninstall_twice_is_fine(uninstalled: Staged) -> None:
    assert uninstalled.second.returncode == 0, uninstalled.second.stdout + uninstalled.second.stderr
    assert (uninstalled.root / DATA / "agent.db").exists()


def test_a_repository_inside_opt_oht_agent_is_refused(tmp_path: Path) -> None:
    """Uninstall removes /opt/oht-agent: run from a clone there, it would remove the clone."""
    root = tmp_path / "root"
    clone = root / "opt/oht-agent"
    (clone / "packaging").mkdir(parents=True)
    shutil.copy(REPO / "packaging/install.sh", clone / "packaging/install.sh")
    refused = subprocess.run(
        ["sh", str(clone / "packaging/install.sh"), "uninstall"],
        capture_output=True,
        text=True,
        timeout=30,
        env=ANALYZE_ENV | {"DESTDIR": str(root)},
    )
    assert refused.returncode == 1
    assert "UNINSTALL_REPO_IN_TARGET" in refused.stderr and "hint:" in refused.stderr
    assert (clone / "packaging/install.sh").exists()
