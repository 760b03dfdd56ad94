"""The simulator's own profile reader: real profiles, extends, types and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.sim.main import DEFAULT_PROFILES
from drivers.sim.registers import ProfileError, RegisterBank, load_profile

FIXTURE = """
[profile]
name = "fixture"
role = "power"
module_type = 9
default_address = 7
function_codes = [3, 6]
service_period_ms = 0

[[register]]
name = "A"
address = 0x0000
type = "u16"
access = "RW"
default = 7

[[register]]
name = "BIG"
address = 0x0001
type = "u32"
access = "R"
default = 0x12345678

[[register]]
name = "NEG"
address = 0x0005
type = "i16"
access = "RW"
default = -2
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path


def test_fixture_types_and_defaults(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, "fixture", FIXTURE), "fixture")
    assert profile.function_codes == {3, 6}
    bank = RegisterBank(profile)
    # u32: LOW word at the address, HIGH word at address + 1.
    assert bank.read(0, 3) == [7, 0x5678, 0x1234]
    assert bank.get("BIG") == 0x12345678
    assert bank.words[5] == 0xFFFE and bank.get("NEG") == -2
    assert bank.mapped(0, 3) and not bank.mapped(0, 4)  # 0x0003 is a gap
    assert bank.writable(0) and not bank.writable(1) and not bank.writable(0, 2)
    bank.set("BIG", 0x00010002)
    assert bank.read(1, 2) == [2, 1]
    bank.store(0x0003, 5)  # unmapped: ignored, never becomes readable
    assert 3 not in bank.words


def test_overlapping_registers_are_refused(tmp_path: Path) -> None:
    text = FIXTURE + '\n[[register]]\nname = "CLASH"\naddress = 0x0002\ntype = "u16"\naccess = "R"\n'
    with pytest.raises(ProfileError, match="overlaps"):
        load_profile(write(tmp_path, "fixture", text), "fixture")


def test_missing_profile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path, "nope")


def test_real_profiles_load_with_identity_block() -> None:
    expected = {
        "safety-safefw": (6, "safety", 100),
        "travel-drvfw": (3, "travel", 10),
        "power-v2": (2, "power", 0),
        "dock-readonly": (5, "dock", 0),
    }
    for name, (module_type, role, period) in expected.items():
        profile = load_profile(DEFAULT_PROFILES, name)
        assert (profile.module_type, profile.role, profile.service_period_ms) == (module_type, role, period)
        bank = RegisterBank(profile)
        assert bank.mapped(0x0100, 10), name
        assert bank.get("MODULE_TYPE") == module_type


def test_extends_inherits_overrides_and_appends() -> None:
    base = load_profile(DEFAULT_PROFILES, "travel-drvfw")
    child = load_profile(DEFAULT_PROFILES, "travel-drvfw-deadman")
    assert child.deadman and child.deadman_window_ms > 0 and not base.deadman
    assert child.role == "travel" and child.module_type == 3  # inherited [profile] keys
    assert child.register("HEARTBEAT") is not None and base.register("HEARTBEAT") is None
    assert len(child.registers) == len(base.registers) + 1  # FIRMWARE_VERSION replaced, not doubled
    fw = child.register("FIRMWARE_VERSION")
    assert fw is not None and 0x0200 <= fw.default <= 0x02FF


def test_extends_of_extends_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "fixture", FIXTURE)
    write(tmp_path, "child", '[profile]\nname = "child"\nextends = "fixture"\n')
    write(tmp_path, "grandchild", '[profile]\nname = "grandchild"\nextends = "child"\n')
    assert load_profile(tmp_path, "child").module_type == 9
    with pytest.raises(ProfileError, match="one level"):
        load_profile(tmp_path, "grandchild")
