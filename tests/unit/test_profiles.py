"""Shipped register profiles, the strict loader, `extends`, identity selection and write refusal."""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from pathlib import Path

import pytest

from drivers.modbus.merge import plan_poll
from drivers.profiles import (
    IDENTITY_COUNT,
    IDENTITY_START,
    Identity,
    ProfileError,
    RegisterWriteRefused,
    UnknownModule,
    UnknownRegister,
    load_profile,
    load_profiles,
    plan_write,
    select_profile,
)
from drivers.profiles.loader import IDENTITY_REGISTERS
from oht_errors import CodedError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
SHIPPED = {"safety-safefw", "travel-drvfw", "travel-drvfw-deadman", "power-v2", "dock-readonly"}


@pytest.fixture(scope="module")
def profiles():
    return load_profiles(PROFILES_DIR)


# ---------------------------------------------------------------- shipped profiles


def test_all_shipped_profiles_load(profiles):
    assert set(profiles) == SHIPPED
    for name, profile in profiles.items():
        assert (PROFILES_DIR / f"{name}.toml").is_file()
        assert load_profile(PROFILES_DIR / f"{name}.toml") == profile
        hash(profile)  # immutable and usable as a key


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_identity_block_present(profiles, name):
    profile = profiles[name]
    assert IDENTITY_START == 0x0100 and IDENTITY_COUNT == 10
    for reg_name, address, access in IDENTITY_REGISTERS:
        reg = profile.register(reg_name)
        assert (reg.address, reg.access, reg.type) == (address, access, "u16")
    assert profile.register("DEVICE_ID").default == profile.default_address
    assert profile.register("MODULE_TYPE").default == profile.module_type
    assert profile.accepts_firmware(profile.register("FIRMWARE_VERSION").default)
    assert profile.register("RESET_ERROR_CMD").poll == "none"
    assert profile.register("CONFIG_BAUDRATE").default == 5
    # the identity read covers the whole readable block in one request
    assert [r.address for r in profile.poll_registers("identity")] == list(range(0x0100, 0x0109))


def test_safety_profile_matches_safe_fw(profiles):
    p = profiles["safety-safefw"]
    assert (p.module_type, p.default_address, p.service_period_ms) == (6, 5, 100)
    assert p.function_codes == (3, 4, 6, 16)
    reset = p.register("RESET_FLAG")
    assert (reset.address, reset.access, reset.safety) == (0x0004, "RW", True)
    assert [p.register(f"SAFETY_ZONE{i}_THRESHOLD").default for i in range(1, 5)] == [30, 50, 60, 70]
    assert p.register("RELAY1_CONTROL").address == 0x0040 and p.register("RELAY1_CONTROL").safety
    assert p.register("SAFETY_MODE").min == 1 and p.register("SAFETY_MODE").max == 4
    for addr in [*range(0x0006, 0x0010), *range(0x0016, 0x001A), *range(0x002E, 0x0040)]:
        # unused addresses the firmware answers (its register array): placeholders that let the
        # status read run through to the distances, never polled for themselves
        reg = p.by_address(addr)
        assert reg is not None and reg.poll == "none" and not reg.safety
    fast = {r.name for r in p.poll_registers("fast")}
    # every tick: the status, the distances and the sensor enables (a reboot clears those)
    assert {"SAFETY_SYSTEM_STATUS", "ANALOG_INPUT_1", "RESET_FLAG", "ANALOG_1_ENABLE", "ANALOG_4_ENABLE"} <= fast
    assert plan_poll(p, "fast") == [(0x0000, 0x001E)]
    # the rest of the configuration rides on that read now and then: one read holds both
    config = {r.name for r in p.poll_registers("config")}
    assert {"DI4_STATUS", "DI1_ENABLE", "SAFETY_ZONE1_THRESHOLD", "AUTO_RESET_ENABLE", "SAFETY_MODE"} <= config
    assert plan_poll(p, "config") == [(0x001E, 0x004C - 0x001E)]


def test_travel_profile_hazard_register_is_direction(profiles):
    p = profiles["travel-drvfw"]
    # the old master's "E-stop" write went to 0x0014, which on DRV-FW is M2_DIRECTION
    assert p.by_address(0x0014).name == "M2_DIRECTION"
    with pytest.raises(RegisterWriteRefused):
        plan_write(p, "M2_DIRECTION", 3)
    assert plan_write(p, "M1_ENABLE", 0) == (0x0001, [0])
    assert plan_write(p, "M2_COMMAND_SPEED", 0) == (0x0012, [0])
    assert p.register("M1_PID_KP").scale == 0.01 and p.register("M1_PID_KP").default == 100
    assert p.register("CURRENT").unit == "A"


def test_power_profile_decodes_scaled_values(profiles):
    p = profiles["power-v2"]
    values = p.decode_block(0x0000, [240, 15, 800])
    assert values == {"BATTERY_VOLTAGE": 24.0, "BATTERY_CURRENT": 1.5, "BATTERY_SOC": 80.0}
    assert plan_write(p, "V_SET", 24.5) == (0x0030, [245])
    with pytest.raises(RegisterWriteRefused):
        plan_write(p, "V_SET", 60.1)
    with pytest.raises(RegisterWriteRefused):
        plan_write(p, "BATTERY_SOC", 50)  # read-only register


def test_decode_block_skips_registers_cut_by_the_block(profiles):
    p = profiles["safety-safefw"]
    words = [1, 0, 0, 0, 1, 7]
    assert p.decode_block(0x0000, words)["RESET_FLAG"] == 1
    assert set(p.decode_block(0x0002, [0, 0])) == {"SAFETY_ZONE_STATUS", "PROXIMITY_ALERT_STATUS"}
    assert p.decode_block(0x0050, [0] * 18) == {}  # unmapped addresses produce nothing


def test_unknown_register_name(profiles):
    with pytest.raises(UnknownRegister) as info:
        profiles["power-v2"].register("NOPE")
    assert isinstance(info.value, KeyError) and info.value.code == "REGISTER_UNKNOWN"
    with pytest.raises(RegisterWriteRefused):
        plan_write(profiles["power-v2"], "NOPE", 1)


def test_read_only_profile_refuses_every_write(profiles):
    dock = profiles["dock-readonly"]
    assert dock.read_only
    writable = [r for r in dock.registers if r.writable]
    assert writable, "the identity block has RW registers, so read_only must be what refuses"
    for reg in writable:
        with pytest.raises(RegisterWriteRefused) as info:
            plan_write(dock, reg.name, reg.default)
        assert info.value.code == "REGISTER_WRITE_REFUSED"
        assert "read-only" in str(info.value)
    assert dock.register("POSITION_X").type == "i16"
    assert dock.decode_block(0x0030, [0xFFFF])["POSITION_X"] == -1


# ---------------------------------------------------------------- extends


def test_extends_inherits_and_overrides(profiles):
    base, dm = profiles["travel-drvfw"], profiles["travel-drvfw-deadman"]
    assert dm.extends == "travel-drvfw" and base.extends is None
    assert dm.deadman and dm.deadman_window_ms == 300
    assert (dm.firmware_min, dm.firmware_max) == (0x0200, 0x02FF)
    assert (dm.module_type, dm.default_address, dm.turnaround_ms) == (3, 3, 30)
    hb = dm.register("HEARTBEAT")
    assert (hb.address, hb.access, hb.type, hb.safety, hb.poll) == (0x00F0, "RW", "u16", True, "none")
    assert "HEARTBEAT" not in base
    # the inherited map is identical except the replaced FIRMWARE_VERSION and the added HEARTBEAT
    inherited = {r.name: r for r in dm.registers if r.name not in ("HEARTBEAT", "FIRMWARE_VERSION")}
    assert inherited == {r.name: r for r in base.registers if r.name != "FIRMWARE_VERSION"}
    assert dm.register("FIRMWARE_VERSION").default == 0x0200


# ---------------------------------------------------------------- bad files

GOOD = """
[profile]
name = "{name}"
role = "travel"
module_type = {module_type}
firmware_min = 0x0100
firmware_max = 0x01FF
default_address = 3
turnaround_ms = 30
service_period_ms = 0
function_codes = [3, 6, 16]
max_read_registers = 32
{profile_extra}

[[register]]
name = "SPEED"
address = 0x0000
type = "u16"
access = "RW"
min = 0
max = 100
{registers}
"""

IDENTITY = "".join(
    f'\n[[register]]\nname = "{n}"\naddress = {a}\ntype = "u16"\naccess = "{acc}"\n'
    f'poll = "{"none" if n == "RESET_ERROR_CMD" else "identity"}"\n'
    + {
        "DEVICE_ID": "default = 3\n",
        "MODULE_TYPE": "default = {module_type}\n",
        "FIRMWARE_VERSION": "default = 0x0100\n",
        "CONFIG_STOP_BITS": "default = 1\n",
    }.get(n, "")
    for n, a, acc in IDENTITY_REGISTERS
)


def write_profile(
    directory: Path,
    name: str = "test-prof",
    *,
    module_type: int = 3,
    profile_extra: str = "",
    registers: str = "",
    identity: bool = True,
) -> Path:
    text = GOOD.format(
        name=name,
        module_type=module_type,
        profile_extra=profile_extra,
        registers=registers + (IDENTITY.replace("{module_type}", str(module_type)) if identity else ""),
    )
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_profile_is_valid(tmp_path):
    profile = load_profile(write_profile(tmp_path))
    assert profile.name == "test-prof" and profile.register("SPEED").writable


def _problems(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    err = info.value
    assert isinstance(err, CodedError) and err.code == "PROFILE_INVALID"
    assert str(path) in err.hint
    return [str(p) for p in err.problems]


def test_unknown_keys_rejected(tmp_path):
    problems = _problems(
        write_profile(
            tmp_path,
            profile_extra='colour = "red"',
            registers='\n[[register]]\nname = "X"\naddress = 9\ntype = "u16"\naccess = "R"\nscal = 0.1\n',
        )
    )
    assert any("profile.colour" in p and "unknown key" in p for p in problems)
    assert any("register[" in p and ".scal" in p and "unknown key" in p for p in problems)


def test_every_problem_is_listed(tmp_path):
    bad = """
[[register]]
name = "SPEED"
address = 0x0001
type = "u16"
access = "R"

[[register]]
name = "WIDE"
address = 0x0010
type = "u32"
access = "R"

[[register]]
name = "INSIDE_WIDE"
address = 0x0011
type = "u16"
access = "R"

[[register]]
name = "LIMITED"
address = 0x0020
type = "u16"
access = "RW"
min = 0
max = 10
default = 11

[[register]]
name = "BADTYPE"
address = 0x0021
type = "f32"
access = "R"
"""
    path = write_profile(tmp_path, profile_extra="bogus = 1", registers=bad)
    problems = _problems(path)
    text = "\n".join(problems)
    assert "profile.bogus" in text  # unknown key
    assert "duplicate name" in text and "SPEED" in text  # duplicate name
    assert "0x0011 is already occupied by WIDE" in text  # u32 occupies two
    assert "LIMITED" in text and ".default" in text  # default out of range
    assert "BADTYPE" in text and ".type" in text  # bad type
    assert len(problems) >= 5
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    for p in problems:  # the message itself lists every one of them
        assert p in info.value.message


@pytest.mark.parametrize(
    ("snippet", "needle"),
    [
        (
            '\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "i16"\naccess = "RW"\ndefault = 40000\n',
            "outside the i16 range",
        ),
        (
            '\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "u16"\naccess = "RW"\nmin = 5\nmax = 1\n',
            "greater than max",
        ),
        (
            '\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "u16"\naccess = "RW"\nunit = "furlong"\n',
            "not a known unit",
        ),
        ('\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "u16"\naccess = "X"\n', "not one of R, RW, W"),
        (
            '\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "u16"\naccess = "W"\npoll = "fast"\n',
            "write-only register cannot be polled",
        ),
        ('\n[[register]]\nname = "A"\naddress = 0xFFFF\ntype = "u32"\naccess = "R"\n', "outside"),
        ('\n[[register]]\nname = "a"\naddress = 0x0030\ntype = "u16"\naccess = "R"\n', "UPPER_SNAKE_CASE"),
        ('\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "u16"\naccess = "R"\nscale = 0\n', "positive number"),
        (
            '\n[[register]]\nname = "A"\naddress = 0x0030\ntype = "u16"\naccess = "RW"\nscale = 0.1\nmax = 7000\n',
            "cannot be represented",
        ),
    ],
)
def test_register_defects(tmp_path, snippet, needle):
    assert any(needle in p for p in _problems(write_profile(tmp_path, registers=snippet)))


def test_scaled_default_exactly_at_max_is_accepted(tmp_path):
    reg = (
        '\n[[register]]\nname = "SOC"\naddress = 0x0030\ntype = "u16"\naccess = "R"\n'
        "scale = 0.1\nmin = 0\nmax = 100\ndefault = 1000\n"
    )
    assert load_profile(write_profile(tmp_path, registers=reg)).register("SOC").default == 1000


def test_identity_block_required(tmp_path):
    problems = _problems(write_profile(tmp_path, identity=False))
    assert sum("identity register missing" in p for p in problems) == 10


def test_identity_defaults_must_match_profile(tmp_path):
    path = write_profile(tmp_path)
    path.write_text(path.read_text().replace("default = 0x0100", "default = 0x0300"))
    assert any("FIRMWARE_VERSION" in p and "outside firmware_min" in p for p in _problems(path))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("deadman = true\ndeadman_window_ms = 300", "needs a HEARTBEAT"),
        ("deadman = true", "must be > 0"),
        ('role = "crane"', None),  # duplicate key: TOML syntax error
    ],
)
def test_profile_defects(tmp_path, extra, needle):
    problems = _problems(write_profile(tmp_path, profile_extra=extra))
    if needle:
        assert any(needle in p for p in problems)
    else:
        assert any("not valid TOML" in p for p in problems)


def test_name_must_match_file(tmp_path):
    path = write_profile(tmp_path, name="right")
    path.rename(tmp_path / "wrong.toml")
    assert any("does not match the file name" in p for p in _problems(tmp_path / "wrong.toml"))


def test_load_profiles_lists_problems_of_all_files(tmp_path):
    write_profile(tmp_path, name="a", profile_extra="x = 1")
    write_profile(tmp_path, name="b", profile_extra="y = 1", module_type=4)
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "a.toml" in text and "b.toml" in text


def test_load_profiles_rejects_overlapping_firmware_ranges(tmp_path):
    write_profile(tmp_path, name="a")
    write_profile(tmp_path, name="b")
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)
    assert "overlaps" in info.value.message


def test_load_profiles_empty_directory(tmp_path):
    with pytest.raises(ProfileError):
        load_profiles(tmp_path)


# ---------------------------------------------------------------- extends (synthetic)


def test_extends_replaces_and_appends(tmp_path):
    write_profile(tmp_path, name="base")
    child = tmp_path / "child.toml"
    child.write_text(
        textwrap.dedent("""
        [profile]
        name = "child"
        extends = "base"
        firmware_min = 0x0200
        firmware_max = 0x02FF

        [[register]]
        name = "FIRMWARE_VERSION"
        address = 0x0105
        type = "u16"
        access = "R"
        default = 0x0200
        poll = "identity"

        [[register]]
        name = "SPEED"
        address = 0x0000
        type = "u16"
        access = "RW"
        min = 0
        max = 50

        [[register]]
        name = "EXTRA"
        address = 0x0040
        type = "u32"
        access = "R"
    """)
    )
    profiles = load_profiles(tmp_path)
    c = profiles["child"]
    assert c.register("SPEED").max == 50 and profiles["base"].register("SPEED").max == 100
    assert c.register("EXTRA").width == 2
    assert c.role == "travel" and c.extends == "base"


def test_extends_one_level_only(tmp_path):
    write_profile(tmp_path, name="base")
    (tmp_path / "mid.toml").write_text(
        '[profile]\nname = "mid"\nextends = "base"\nfirmware_min = 0x0200\nfirmware_max = 0x02FF\n'
    )
    (tmp_path / "leaf.toml").write_text('[profile]\nname = "leaf"\nextends = "mid"\n')
    assert any("one level only" in p for p in _problems(tmp_path / "leaf.toml"))


def test_extends_missing_parent(tmp_path):
    (tmp_path / "orphan.toml").write_text('[profile]\nname = "orphan"\nextends = "nobody"\n')
    assert any("nobody" in p for p in _problems(tmp_path / "orphan.toml"))


def test_extends_merged_result_is_validated(tmp_path):
    write_profile(tmp_path, name="base")
    (tmp_path / "clash.toml").write_text(
        textwrap.dedent("""
        [profile]
        name = "clash"
        extends = "base"
        [[register]]
        name = "OTHER"
        address = 0x0000
        type = "u16"
        access = "R"
    """)
    )
    problems = _problems(tmp_path / "clash.toml")
    assert any("already occupied" in p for p in problems)


def test_shipped_directory_copy_with_a_broken_child(tmp_path):
    for f in PROFILES_DIR.glob("*.toml"):
        shutil.copy(f, tmp_path)
    path = tmp_path / "travel-drvfw-deadman.toml"
    path.write_text(path.read_text().replace("deadman_window_ms = 300", "deadman_window_ms = 0"))
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)
    assert all("travel-drvfw-deadman" in p.source for p in info.value.problems)


# ---------------------------------------------------------------- identity and selection


def _identity(module_type: int, firmware: int, device_id: int = 3) -> Identity:
    return Identity.from_words([device_id, 5, 0, 1, module_type, firmware, 0x0100, 0, 0, 0])


def test_identity_decoding():
    ident = Identity.from_words([5, 5, 0, 1, 6, 0x0101, 0x0100, 0x0003, 0x0010, 0])
    assert (ident.device_id, ident.module_type, ident.firmware_version) == (5, 6, 0x0101)
    assert (ident.system_status, ident.system_error) == (3, 16)
    assert ident.firmware_text == "1.01" and ident.hardware_text == "1.00"
    assert Identity.from_words([5, 5, 0, 1, 6, 0x0101, 0x0100, 0, 0]) == _identity(6, 0x0101, 5)
    with pytest.raises(ValueError):
        Identity.from_words([1, 2, 3])
    with pytest.raises(ValueError):
        Identity.from_words([0x10000] * 10)


@pytest.mark.parametrize(
    ("module_type", "firmware", "expected"),
    [
        (6, 0x0100, "safety-safefw"),
        (6, 0x01FF, "safety-safefw"),
        (3, 0x0105, "travel-drvfw"),
        (3, 0x0201, "travel-drvfw-deadman"),
        (2, 0x0100, "power-v2"),
        (5, 0x0150, "dock-readonly"),
    ],
)
def test_select_profile_picks_right(profiles, module_type, firmware, expected):
    assert select_profile(_identity(module_type, firmware), profiles).name == expected
    assert select_profile(_identity(module_type, firmware), list(profiles.values())).name == expected


@pytest.mark.parametrize(("module_type", "firmware"), [(9, 0x0100), (3, 0x0300), (6, 0x00FF), (4, 0x0100)])
def test_select_profile_refuses_unknown(profiles, module_type, firmware):
    with pytest.raises(UnknownModule) as info:
        select_profile(_identity(module_type, firmware), profiles)
    assert info.value.code == "MODULE_UNKNOWN"
    assert "profile" in info.value.hint


def test_select_profile_refuses_ambiguous(profiles):
    twin = dataclasses.replace(profiles["safety-safefw"], name="safety-twin")
    with pytest.raises(ProfileError) as info:
        select_profile(_identity(6, 0x0101), [profiles["safety-safefw"], twin])
    assert "safety-safefw" in info.value.message and "safety-twin" in info.value.message


def test_poll_groups_are_the_readable_registers_of_each_group_in_address_order() -> None:
    for profile in load_profiles(PROFILES_DIR).values():
        for group in ("fast", "slow", "identity", "none", "never-heard-of"):
            expected = tuple(r for r in profile.registers if r.poll == group and r.readable)
            assert profile.poll_registers(group) == expected
            assert profile.poll_names(group) == tuple(r.name for r in expected)
