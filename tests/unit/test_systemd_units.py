"""The systemd units of the two-process agent (docs/systemd.md): valid offline, sandboxed, and each
process given exactly the access it needs (the core: its devices and no network; the gateway: the
network and no devices).

`systemd-analyze verify` checks that ExecStart's binary exists. The units are verified unchanged,
inside a temporary root (`--root=`) that holds this machine's system units, the three units in
etc/systemd/system and an executable at the unit's ExecStart path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
CORE = "oht-agent-core.service"
GATEWAY = "oht-agent-gateway.service"
TARGET = "oht-agent.target"
UNITS = (CORE, GATEWAY, TARGET)
SERVICES = (CORE, GATEWAY)
MAX_EXPOSURE = 2.5

ANALYZE = shutil.which("systemd-analyze")
SYSUSERS = shutil.which("systemd-sysusers")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs systemd)"
)
# The host's system units, so that sysinit.target, network-online.target ... resolve inside the root.
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
# systemd-analyze in a predictable form: no pager, no colours, English messages.
ANALYZE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")} | {
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "LC_ALL": "C.UTF-8",
}


# ---------------------------------------------------------------------------------- unit parser
Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """systemd's unit syntax: [sections], Key=value lines (a key may repeat), # and ; comments,
    backslash continuation lines. Returns section -> [(key, value), ...] in file order."""
    sections: Unit = {}
    current: str | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def load(name: str) -> Unit:
    return parse_unit((SYSTEMD_DIR / name).read_text())


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every assignment of a key in order; an empty assignment resets the list, as systemd does."""
    out: list[str] = []
    for k, v in unit.get(section, []):
        if k == key:
            out = [] if v == "" else [*out, v]
    return out


def words(unit: Unit, section: str, key: str) -> list[str]:
    """A list-valued key (several assignments, each whitespace-separated) as one list of words."""
    return [w for v in values(unit, section, key) for w in v.split()]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{section}.{key}: expected one assignment, got {found}"
    return found[0]


def seconds(span: str) -> float:
    """A systemd time span (\"1\", \"100ms\", \"1s 500ms\", \"2min\") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), f"not a time span: {span!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


# ------------------------------------------------------------------- systemd-analyze, offline
def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ANALYZE_ENV)


def exec_path(unit_name: str) -> str:
    return one(load(unit_name), "Service", "ExecStart").split()[0].lstrip("-@:+!")


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root holding the host's system units, our units as shipped, and ExecStart's binary."""
    root = tmp_path_factory.mktemp("root")
    host_units = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    assert host_units is not None, f"no system unit directory with sysinit.target among {HOST_UNIT_DIRS}"
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD_DIR / name, etc / name)
    for name in SERVICES:
        binary = root / exec_path(name).lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    yield root


def verify_problems(root: Path, name: str) -> list[str]:
    """What `systemd-analyze verify` has to say about a unit: a non-zero exit, and every line about
    our units or about an unknown section or key (verify only warns about those, exit status 0)."""
    assert ANALYZE is not None
    result = run([ANALYZE, "verify", "--no-pager", f"--root={root}", name])
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    problems = [line for line in lines if "oht-agent" in line or "unknown" in line.lower()]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    return problems


@needs_analyze
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies(unit_root: Path, name: str) -> None:
    problems = verify_problems(unit_root, name)
    assert not problems, "\n".join(problems)


@needs_analyze
@pytest.mark.timeout(120)
def test_verify_catches_an_unknown_directive_and_a_missing_binary(unit_root: Path, tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt key fails it, and so does ExecStart's binary
    missing from the root (so the binary is looked up inside the root, not on this machine)."""
    root = tmp_path / "root"
    shutil.copytree(unit_root, root, symlinks=True)
    unit = root / "etc/systemd/system" / CORE
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=5\n", 1))
    assert any("WatchdogSecs" in p for p in verify_problems(root, CORE))

    unit.write_text((SYSTEMD_DIR / CORE).read_text())
    assert not verify_problems(root, CORE)
    (root / exec_path(CORE).lstrip("/")).unlink()
    assert any("not executable" in p or "No such file" in p for p in verify_problems(root, CORE))


def exposure(path: Path) -> float:
    """`systemd-analyze security --offline=true` on a unit file as it is: its overall figure."""
    assert ANALYZE is not None
    result = run([ANALYZE, "security", "--no-pager", "--offline=true", str(path)])
    found = re.search(rf"Overall exposure level for {re.escape(path.name)}: (\d+(?:\.\d+)?)", result.stdout)
    assert found, f"no exposure figure (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr}"
    return float(found.group(1))


@needs_analyze
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SERVICES)
def test_exposure_at_most_2_5(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    figure = exposure(SYSTEMD_DIR / name)
    with capsys.disabled():
        print(f"\n{name}: overall exposure {figure} (limit {MAX_EXPOSURE})")
    assert figure <= MAX_EXPOSURE


@needs_analyze
@pytest.mark.timeout(120)
def test_exposure_figure_is_the_units_own(tmp_path: Path) -> None:
    """The figure parsed above moves with the unit: a service with no sandboxing scores high."""
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(bare) > 9


# ------------------------------------------------------------------------- what each unit says
@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", SERVICES)
def test_both_services_notify_watchdog_restart_and_belong_to_the_target(name: str) -> None:
    unit = load(name)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert 0 < seconds(one(unit, "Service", "WatchdogSec")) <= 10
    assert one(unit, "Service", "Restart") == "always"
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"  # never stops restarting
    assert words(unit, "Unit", "PartOf") == [TARGET]
    assert one(unit, "Service", "Group") == "oht-agent"
    assert one(unit, "Service", "UMask") == "0007"
    assert one(unit, "Service", "ConfigurationDirectory") == "oht-agent"
    role = "core" if name == CORE else "gateway"
    assert one(unit, "Service", "ExecStart").split()[1:] == [role, "--config", "/etc/oht-agent/agent.toml"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictRealtime", "MemoryDenyWriteExecute"):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert values(unit, "Service", "CapabilityBoundingSet") == []
    assert values(unit, "Service", "AmbientCapabilities") == []


@pytest.mark.timeout(10)
def test_core_has_no_network_and_exactly_its_devices() -> None:
    unit = load(CORE)
    assert words(unit, "Service", "RestrictAddressFamilies") == ["AF_UNIX"]
    assert one(unit, "Service", "IPAddressDeny") == "any"
    assert values(unit, "Service", "IPAddressAllow") == []
    assert one(unit, "Service", "PrivateNetwork") == "yes"
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert sorted(values(unit, "Service", "DeviceAllow")) == sorted(
        [
            "char-ttyS rw",
            "char-ttyUSB rw",
            "char-ttyAMA rw",  # what /dev/ttyOHT485 may point to
            "/dev/watchdog rw",
            "char-gpiochip rw",  # the E-stop input
        ]
    )
    assert one(unit, "Service", "PrivateDevices") == "no"  # a private /dev would hide the real devices


@pytest.mark.timeout(10)
def test_core_identity_priority_and_directories() -> None:
    unit = load(CORE)
    assert one(unit, "Service", "User") == "oht-core"
    assert sorted(words(unit, "Service", "SupplementaryGroups")) == ["dialout", "gpio"]
    assert one(unit, "Service", "CPUSchedulingPolicy") == "fifo"
    assert 1 <= int(one(unit, "Service", "CPUSchedulingPriority")) < 50  # below the kernel's IRQ threads
    assert values(unit, "Service", "Nice") == []
    assert one(unit, "Service", "StateDirectory") == "oht-agent"
    assert one(unit, "Service", "StateDirectoryMode") == "0770"
    assert one(unit, "Service", "RuntimeDirectory") == "oht-agent"
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0750"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"


@pytest.mark.timeout(10)
def test_gateway_has_no_devices_and_only_network_families() -> None:
    unit = load(GATEWAY)
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert values(unit, "Service", "DeviceAllow") == []
    assert one(unit, "Service", "PrivateDevices") == "yes"
    assert sorted(words(unit, "Service", "RestrictAddressFamilies")) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one(unit, "Service", "User") == "oht-gateway"
    assert values(unit, "Service", "SupplementaryGroups") == []  # not in dialout, not in gpio


@pytest.mark.timeout(10)
def test_gateway_follows_the_core_and_comes_back_quickly() -> None:
    unit = load(GATEWAY)
    assert CORE in words(unit, "Unit", "Wants")
    assert CORE in words(unit, "Unit", "After")
    assert seconds(one(unit, "Service", "RestartSec")) <= 0.5  # back within 2 s, start-up included
    # The database directory is the core's StateDirectory=: declared in one unit only, or systemd
    # would chown it back and forth between oht-core and oht-gateway at every start.
    assert values(unit, "Service", "StateDirectory") == []
    assert values(unit, "Service", "RuntimeDirectory") == []
    assert values(unit, "Service", "ReadWritePaths") == ["/var/lib/oht-agent"]


@pytest.mark.timeout(10)
def test_target_starts_both_and_is_enabled_from_multi_user() -> None:
    unit = load(TARGET)
    assert sorted(words(unit, "Unit", "Wants")) == sorted(SERVICES)
    assert words(unit, "Install", "WantedBy") == ["multi-user.target"]
    assert not (SYSTEMD_DIR / "oht-agent.service").exists(), "the single-process unit is replaced by the two"


# ---------------------------------------------------------------------------------- accounts
def sysusers_lines() -> list[list[str]]:
    import shlex

    text = (SYSTEMD_DIR / "oht-agent.sysusers").read_text()
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.timeout(10)
def test_sysusers_declares_the_accounts_the_units_run_as() -> None:
    lines = sysusers_lines()
    users = {row[1]: row for row in lines if row[0] == "u"}
    members = {(row[1], row[2]) for row in lines if row[0] == "m"}
    assert ["g", "oht-agent", "-"] in lines
    for name in SERVICES:
        unit = load(name)
        user = one(unit, "Service", "User")
        assert users[user][2] == "-:oht-agent"  # automatic uid, primary group oht-agent
        assert users[user][4:] == ["/var/lib/oht-agent", "/usr/sbin/nologin"]
        assert (user, "oht-agent") in members
        for group in words(unit, "Service", "SupplementaryGroups"):
            assert (user, group) in members, (user, group)
    assert {g for u, g in members if u == "oht-gateway"} == {"oht-agent"}


@pytest.mark.timeout(60)
@pytest.mark.skipif(SYSUSERS is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_them(tmp_path: Path) -> None:
    """systemd-sysusers itself, on an empty root that has only root and dialout."""
    assert SYSUSERS is not None
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    result = subprocess.run(
        [SYSUSERS, f"--root={tmp_path}", "-"],
        input=(SYSTEMD_DIR / "oht-agent.sysusers").read_text(),
        capture_output=True,
        text=True,
        timeout=30,
        env=ANALYZE_ENV,
    )
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    agent_gid = group["oht-agent"][2]
    for user in ("oht-core", "oht-gateway"):
        _, _, uid, gid, _, home, shell = passwd[user]
        assert int(uid) < 1000 and gid == agent_gid and home == "/var/lib/oht-agent" and shell == "/usr/sbin/nologin"
    assert set(group["oht-agent"][3].split(",")) == {"oht-core", "oht-gateway"}
    assert group["dialout"][3].split(",") == ["oht-core"]
    assert group["gpio"][3].split(",") == ["oht-core"]
