"""Load and validate register profiles from TOML.

Validation is strict and exhaustive: unknown keys, wrong types, duplicate names, overlapping
addresses, defaults outside the allowed range and a missing identity block are all collected and
raised together as one `ProfileError`. A typo in a profile must stop the agent at start-up with a
precise message, not surface later as a write to the wrong register.

`extends = "other"` in [profile] loads `other.toml` from the same directory first (one level
only): its [profile] keys are overridden by the ones given here, and each [[register]] given
here replaces the inherited register of the same name or is appended.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeGuard, cast

from drivers.profiles.errors import Problem, ProfileError
from drivers.profiles.model import (
    ACCESS_MODES,
    POLL_GROUPS,
    ROLES,
    TYPE_RANGES,
    UNITS,
    Access,
    Profile,
    Register,
    RegisterType,
)

PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
REGISTER_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
MODBUS_MAX_READ = 125  # protocol limit for function codes 3 and 4

# [profile] keys: required ones have no default
_PROFILE_REQUIRED = (
    "name",
    "role",
    "module_type",
    "firmware_min",
    "firmware_max",
    "default_address",
    "turnaround_ms",
    "service_period_ms",
    "function_codes",
    "max_read_registers",
)
_PROFILE_OPTIONAL: dict[str, Any] = {
    "description": "",
    "read_only": False,
    "deadman": False,
    "deadman_window_ms": 0,
    "extends": None,
}
_REGISTER_REQUIRED = ("name", "address", "type", "access")
_REGISTER_OPTIONAL: dict[str, Any] = {
    "scale": 1.0,
    "unit": "",
    "min": None,
    "max": None,
    "default": 0,
    "safety": False,
    "poll": "slow",
    "description": "",
}

# (name, address, access); the identity block every profile must carry (docs/firmware.md#identity-block)
IDENTITY_REGISTERS: tuple[tuple[str, int, str], ...] = (
    ("DEVICE_ID", 0x0100, "R"),
    ("CONFIG_BAUDRATE", 0x0101, "RW"),
    ("CONFIG_PARITY", 0x0102, "RW"),
    ("CONFIG_STOP_BITS", 0x0103, "RW"),
    ("MODULE_TYPE", 0x0104, "R"),
    ("FIRMWARE_VERSION", 0x0105, "R"),
    ("HARDWARE_VERSION", 0x0106, "R"),
    ("SYSTEM_STATUS", 0x0107, "R"),
    ("SYSTEM_ERROR", 0x0108, "R"),
    ("RESET_ERROR_CMD", 0x0109, "W"),
)


class _Collector:
    """Accumulates problems for one source so validation never stops at the first one."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.source, key, message))


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _dec(x: int | float) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def _read_toml(path: Path, out: _Collector) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        out.add("(syntax)", f"not valid TOML: {exc}")
    except OSError as exc:
        out.add("(file)", f"cannot read: {exc}")
    return None


def _merge_extends(parent: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Apply `child` on top of `parent` (raw TOML dicts), as described in the module docstring."""
    prof = dict(parent.get("profile", {}))
    prof.pop("extends", None)
    prof.update(child.get("profile", {}))
    registers = [dict(r) if isinstance(r, dict) else r for r in parent.get("register", [])]
    index = {r.get("name"): i for i, r in enumerate(registers) if isinstance(r, dict)}
    for reg in child.get("register", []):
        name = reg.get("name") if isinstance(reg, dict) else None
        if name is not None and name in index:
            registers[index[name]] = reg
        else:
            registers.append(reg)
    merged: dict[str, Any] = {k: v for k, v in child.items() if k not in ("profile", "register")}
    merged["profile"] = prof
    merged["register"] = registers
    return merged


def _check_keys(
    table: Mapping[str, Any], required: Iterable[str], optional: Iterable[str], where: str, out: _Collector
) -> None:
    allowed = set(required) | set(optional)
    for key in table:
        if key not in allowed:
            out.add(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in table:
            out.add(f"{where}.{key}", "missing required key")


def _int_field(table: Mapping[str, Any], key: str, where: str, out: _Collector, lo: int, hi: int) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if not _is_int(value):
        out.add(f"{where}.{key}", f"must be an integer, got {value!r}")
        return None
    if not lo <= value <= hi:
        out.add(f"{where}.{key}", f"{value} outside {lo}..{hi}")
        return None
    return value


def _parse_profile_table(table: Any, out: _Collector, stem: str | None) -> dict[str, Any] | None:
    if not isinstance(table, dict):
        out.add("profile", "missing [profile] table")
        return None
    _check_keys(table, _PROFILE_REQUIRED, _PROFILE_OPTIONAL, "profile", out)
    values: dict[str, Any] = {}
    ok = True

    def take(key: str, value: Any) -> None:
        nonlocal ok
        if value is None and key in _PROFILE_REQUIRED:
            ok = False
        values[key] = value

    name = table.get("name")
    if name is not None and not (isinstance(name, str) and PROFILE_NAME.match(name)):
        out.add("profile.name", f"must be lower-case letters, digits and '-', got {name!r}")
        name = None
    elif isinstance(name, str) and stem is not None and name != stem:
        out.add("profile.name", f"{name!r} does not match the file name {stem + '.toml'!r}")
    take("name", name)

    role = table.get("role")
    if role is not None and role not in ROLES:
        out.add("profile.role", f"{role!r} is not one of {', '.join(sorted(ROLES))}")
        role = None
    take("role", role)

    take("module_type", _int_field(table, "module_type", "profile", out, 0, 0xFFFF))
    take("firmware_min", _int_field(table, "firmware_min", "profile", out, 0, 0xFFFF))
    take("firmware_max", _int_field(table, "firmware_max", "profile", out, 0, 0xFFFF))
    if values["firmware_min"] is not None and values["firmware_max"] is not None:
        if values["firmware_min"] > values["firmware_max"]:
            out.add("profile.firmware_max", "firmware_min is greater than firmware_max")
            ok = False
    take("default_address", _int_field(table, "default_address", "profile", out, 1, 247))
    take("turnaround_ms", _int_field(table, "turnaround_ms", "profile", out, 1, 60_000))
    take("service_period_ms", _int_field(table, "service_period_ms", "profile", out, 0, 60_000))
    take("max_read_registers", _int_field(table, "max_read_registers", "profile", out, 2, MODBUS_MAX_READ))

    fcs = table.get("function_codes")
    if fcs is not None:
        if not (isinstance(fcs, list) and fcs and all(_is_int(f) and 1 <= f <= 127 for f in fcs)):
            out.add("profile.function_codes", f"must be a non-empty list of codes 1..127, got {fcs!r}")
            fcs = None
        elif len(set(fcs)) != len(fcs):
            out.add("profile.function_codes", "duplicate function code")
            fcs = None
        elif 3 not in fcs:
            out.add("profile.function_codes", "must include 3 (read holding registers)")
            fcs = None
    take("function_codes", tuple(fcs) if fcs is not None else None)

    for key in ("description",):
        value = table.get(key, _PROFILE_OPTIONAL[key])
        if not isinstance(value, str):
            out.add(f"profile.{key}", f"must be a string, got {value!r}")
            ok = False
        values[key] = value
    for key in ("read_only", "deadman"):
        value = table.get(key, _PROFILE_OPTIONAL[key])
        if not isinstance(value, bool):
            out.add(f"profile.{key}", f"must be true or false, got {value!r}")
            ok = False
        values[key] = value
    window = table.get("deadman_window_ms", 0)
    if not _is_int(window) or not 0 <= window <= 60_000:
        out.add("profile.deadman_window_ms", f"must be an integer 0..60000, got {window!r}")
        ok = False
    values["deadman_window_ms"] = window
    values["extends"] = table.get("extends")
    if values["deadman"] is True and _is_int(window) and window <= 0:
        out.add("profile.deadman_window_ms", "must be > 0 when deadman = true")
        ok = False
    if values["deadman"] is False and _is_int(window) and window != 0:
        out.add("profile.deadman_window_ms", "must be 0 when deadman = false")
        ok = False
    return values if ok else None


def _parse_register(index: int, table: Any, out: _Collector) -> Register | None:
    if not isinstance(table, dict):
        out.add(f"register[{index}]", "must be a table")
        return None
    name = table.get("name")
    where = f"register[{index}]" + (f"({name})" if isinstance(name, str) else "")
    before = len(out.problems)
    _check_keys(table, _REGISTER_REQUIRED, _REGISTER_OPTIONAL, where, out)
    if name is not None and not (isinstance(name, str) and REGISTER_NAME.match(name)):
        out.add(f"{where}.name", f"must be UPPER_SNAKE_CASE, got {name!r}")

    reg_type = table.get("type")
    if reg_type is not None and reg_type not in TYPE_RANGES:
        out.add(f"{where}.type", f"{reg_type!r} is not one of {', '.join(TYPE_RANGES)}")
        reg_type = None
    width = TYPE_RANGES[reg_type][2] if reg_type else 1
    _int_field(table, "address", where, out, 0, 0x10000 - width)
    access = table.get("access")
    if access is not None and access not in ACCESS_MODES:
        out.add(f"{where}.access", f"{access!r} is not one of R, RW, W")

    scale = table.get("scale", 1.0)
    if not _is_number(scale) or not scale > 0:
        out.add(f"{where}.scale", f"must be a positive number, got {scale!r}")
        scale = None
    unit = table.get("unit", "")
    if unit not in UNITS:
        out.add(f"{where}.unit", f"{unit!r} is not a known unit ({', '.join(sorted(UNITS))})")
    for key in ("safety",):
        if not isinstance(table.get(key, False), bool):
            out.add(f"{where}.{key}", f"must be true or false, got {table.get(key)!r}")
    poll = table.get("poll", "slow")
    if poll not in POLL_GROUPS:
        out.add(f"{where}.poll", f"{poll!r} is not one of {', '.join(sorted(POLL_GROUPS))}")
    elif access == "W" and poll != "none":
        out.add(f"{where}.poll", 'a write-only register cannot be polled; use poll = "none"')
    if not isinstance(table.get("description", ""), str):
        out.add(f"{where}.description", "must be a string")

    # ranges: engineering min/max within what the raw type can represent; default inside both.
    # Compared as Decimals so that e.g. raw 1000 at scale 0.1 is exactly 100, not 100.00000000000001.
    lo_b = hi_b = None
    if reg_type is not None and scale is not None:
        raw_lo, raw_hi, _ = TYPE_RANGES[reg_type]
        lo_b, hi_b = _dec(raw_lo) * _dec(scale), _dec(raw_hi) * _dec(scale)
    bounds: dict[str, float | None] = {}
    for key in ("min", "max"):
        value = table.get(key)
        bounds[key] = None
        if value is None:
            continue
        if not _is_number(value):
            out.add(f"{where}.{key}", f"must be a number, got {value!r}")
        elif lo_b is not None and hi_b is not None and not lo_b <= _dec(value) <= hi_b:
            out.add(f"{where}.{key}", f"{value} cannot be represented by a {reg_type} at scale {scale}")
        else:
            bounds[key] = value
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        out.add(f"{where}.max", f"min {bounds['min']} is greater than max {bounds['max']}")
    default = table.get("default", 0)
    if not _is_int(default):
        out.add(f"{where}.default", f"must be an integer raw value, got {default!r}")
    elif reg_type is not None:
        raw_lo, raw_hi, _ = TYPE_RANGES[reg_type]
        if not raw_lo <= default <= raw_hi:
            out.add(f"{where}.default", f"raw {default} outside the {reg_type} range {raw_lo}..{raw_hi}")
        elif scale is not None:
            eng = _dec(default) * _dec(scale)
            lo, hi = bounds["min"], bounds["max"]
            if (lo is not None and eng < _dec(lo)) or (hi is not None and eng > _dec(hi)):
                out.add(f"{where}.default", f"raw {default} (= {eng}) outside min..max {lo}..{hi}")

    if len(out.problems) != before:
        return None
    # Every problem above returned early, and `_check_keys` reported any missing required key,
    # so name, type and access are present and valid here.
    return Register(
        name=cast(str, name),
        address=table["address"],
        type=cast(RegisterType, reg_type),
        access=cast(Access, access),
        scale=float(scale),
        unit=unit,
        min=bounds["min"],
        max=bounds["max"],
        default=default,
        safety=table.get("safety", False),
        poll=poll,
        description=table.get("description", ""),
    )


def _check_register_set(registers: list[Register], out: _Collector) -> None:
    seen: dict[str, Register] = {}
    for reg in registers:
        if reg.name in seen:
            out.add(f"register({reg.name})", f"duplicate name (also at 0x{seen[reg.name].address:04X})")
        else:
            seen[reg.name] = reg
    owner: dict[int, Register] = {}
    for reg in sorted(registers, key=lambda r: r.address):
        for addr in reg.addresses:
            other = owner.get(addr)
            if other is not None and other is not reg:
                out.add(f"register({reg.name}).address", f"0x{addr:04X} is already occupied by {other.name}")
                break
            owner[addr] = reg


def _check_profile_rules(values: Mapping[str, Any], registers: list[Register], out: _Collector) -> None:
    """Cross-checks between [profile] and the registers."""
    by_name = {r.name: r for r in registers}
    for name, address, access in IDENTITY_REGISTERS:
        reg = by_name.get(name)
        if reg is None:
            out.add(f"register({name})", f"identity register missing (expected at 0x{address:04X})")
            continue
        if reg.address != address or reg.type != "u16" or reg.access != access:
            out.add(f"register({name})", f"identity register must be u16 {access} at 0x{address:04X}")
        expected_poll = "none" if name == "RESET_ERROR_CMD" else "identity"
        if reg.poll != expected_poll:
            out.add(f"register({name}).poll", f"must be {expected_poll!r}")
    if values.get("default_address") is not None and "DEVICE_ID" in by_name:
        if by_name["DEVICE_ID"].default != values["default_address"]:
            out.add("register(DEVICE_ID).default", "must equal profile.default_address")
    if values.get("module_type") is not None and "MODULE_TYPE" in by_name:
        if by_name["MODULE_TYPE"].default != values["module_type"]:
            out.add("register(MODULE_TYPE).default", "must equal profile.module_type")
    fw = by_name.get("FIRMWARE_VERSION")
    lo, hi = values.get("firmware_min"), values.get("firmware_max")
    if fw is not None and lo is not None and hi is not None and not lo <= fw.default <= hi:
        out.add(
            "register(FIRMWARE_VERSION).default",
            f"0x{fw.default:04X} outside firmware_min..firmware_max (0x{lo:04X}..0x{hi:04X})",
        )
    for reg in registers:
        if reg.poll == "identity" and reg.name not in dict((n, a) for n, a, _ in IDENTITY_REGISTERS):
            out.add(f"register({reg.name}).poll", 'poll = "identity" is reserved for 0x0100-0x0109')
    if values.get("deadman"):
        hb = by_name.get("HEARTBEAT")
        if hb is None:
            out.add("register(HEARTBEAT)", "deadman = true needs a HEARTBEAT register")
        elif hb.type != "u16" or not hb.writable:
            out.add("register(HEARTBEAT)", "HEARTBEAT must be a writable u16")
    mrr = values.get("max_read_registers")
    fcs = values.get("function_codes") or ()
    writable = [r for r in registers if r.writable]
    if not values.get("read_only") and writable and fcs and not ({6, 16} & set(fcs)):
        out.add("profile.function_codes", "writable registers but neither 6 nor 16 is answered")
    if mrr is not None:
        for reg in registers:
            if reg.width > mrr:
                out.add(f"register({reg.name})", "wider than max_read_registers")


def _build(raw: Mapping[str, Any], out: _Collector, stem: str | None) -> Profile | None:
    for key in raw:
        if key not in ("profile", "register"):
            out.add(key, "unknown top-level key (allowed: [profile], [[register]])")
    values = _parse_profile_table(raw.get("profile"), out, stem)
    raw_regs = raw.get("register", [])
    if not isinstance(raw_regs, list):
        out.add("register", "must be an array of tables ([[register]])")
        raw_regs = []
    registers = [r for i, t in enumerate(raw_regs) if (r := _parse_register(i, t, out)) is not None]
    _check_register_set(registers, out)
    _check_profile_rules(values or {}, registers, out)
    if values is None or out.problems:
        return None
    return Profile(registers=tuple(registers), **values)


def _load(path: Path, out: _Collector) -> Profile | None:
    raw = _read_toml(path, out)
    if raw is None:
        return None
    parent_name = raw.get("profile", {}).get("extends") if isinstance(raw.get("profile"), dict) else None
    if parent_name is not None:
        if not (isinstance(parent_name, str) and PROFILE_NAME.match(parent_name)):
            out.add("profile.extends", f"must name a profile, got {parent_name!r}")
            return None
        if parent_name == path.stem:
            out.add("profile.extends", "a profile cannot extend itself")
            return None
        parent_path = path.with_name(parent_name + ".toml")
        parent_out = _Collector(str(parent_path))
        parent_raw = _read_toml(parent_path, parent_out) if parent_path.is_file() else None
        if parent_raw is None:
            out.add("profile.extends", f"{parent_name!r}: no readable {parent_path.name} next to this file")
            out.problems.extend(parent_out.problems)
            return None
        parent_table = parent_raw.get("profile")
        if isinstance(parent_table, dict) and "extends" in parent_table:
            out.add("profile.extends", f"{parent_name!r} itself extends another profile (one level only)")
            return None
        raw = _merge_extends(parent_raw, raw)
    return _build(raw, out, path.stem)


def load_profile(path: str | Path) -> Profile:
    """Load one profile file (resolving `extends` in the same directory); `ProfileError` if invalid."""
    path = Path(path)
    out = _Collector(str(path))
    profile = _load(path, out)
    if out.problems or profile is None:
        raise ProfileError(out.problems or [Problem(str(path), "(file)", "invalid profile")])
    return profile


def load_profiles(directory: str | Path) -> dict[str, Profile]:
    """Load every `*.toml` in `directory`, keyed by profile name.

    Problems from all files are reported together. Two profiles claiming the same module type
    with overlapping firmware ranges are rejected here, because identity-based selection could
    not tell them apart later.
    """
    directory = Path(directory)
    problems: list[Problem] = []
    profiles: dict[str, Profile] = {}
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ProfileError([Problem(str(directory), "(directory)", "no *.toml profiles found")])
    for path in files:
        out = _Collector(str(path))
        profile = _load(path, out)
        problems.extend(out.problems)
        if profile is not None and not out.problems:
            profiles[profile.name] = profile
    ordered = sorted(profiles.values(), key=lambda p: p.name)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if a.module_type == b.module_type and a.firmware_min <= b.firmware_max and b.firmware_min <= a.firmware_max:
                problems.append(
                    Problem(
                        str(directory / f"{b.name}.toml"),
                        "profile.firmware_min",
                        f"module_type {b.module_type} firmware range overlaps profile {a.name!r}",
                    )
                )
    if problems:
        raise ProfileError(problems)
    return profiles
