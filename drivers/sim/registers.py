"""Register profiles (TOML) and the raw register bank of one simulated slave.

The simulator reads the same profile files as the agent, but with its own tiny reader: sharing
the agent's loader would let one misreading hide itself on both sides of the wire. Only what the
firmware needs is read: addresses, types, access and power-on defaults, plus the [profile] keys
that describe the firmware (function codes, service period, dead-man).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VALID_TYPES = ("u16", "i16", "u32")
VALID_ACCESS = ("R", "RW", "W")


class ProfileError(ValueError):
    """A profile file is missing or does not follow the schema."""


@dataclass(frozen=True, slots=True)
class RegisterDef:
    name: str
    address: int
    type: str
    access: str
    default: int

    @property
    def width(self) -> int:
        return 2 if self.type == "u32" else 1

    def default_words(self) -> list[int]:
        """Power-on raw words: u32 LOW word first (at ``address``), HIGH word at address + 1."""
        if self.type == "u32":
            value = self.default & 0xFFFFFFFF
            return [value & 0xFFFF, value >> 16]
        return [self.default & 0xFFFF]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    role: str
    module_type: int
    default_address: int
    read_only: bool
    service_period_ms: int
    function_codes: frozenset[int]
    max_read_registers: int
    deadman: bool
    deadman_window_ms: int
    registers: tuple[RegisterDef, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def register(self, name: str) -> RegisterDef | None:
        for reg in self.registers:
            if reg.name == name:
                return reg
        return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError(f"profile file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None


def _register(path: Path, raw: dict[str, Any]) -> RegisterDef:
    try:
        name = str(raw["name"])
        address = int(raw["address"])
        rtype = str(raw.get("type", "u16"))
        access = str(raw.get("access", "R"))
        default = int(raw.get("default", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: bad [[register]] {raw!r}: {exc}") from None
    if rtype not in VALID_TYPES:
        raise ProfileError(f"{path}: register {name}: type {rtype!r} not in {VALID_TYPES}")
    if access not in VALID_ACCESS:
        raise ProfileError(f"{path}: register {name}: access {access!r} not in {VALID_ACCESS}")
    width = 2 if rtype == "u32" else 1
    if not 0 <= address <= 0x10000 - width:
        raise ProfileError(f"{path}: register {name}: address {address} out of range")
    return RegisterDef(name, address, rtype, access, default)


def load_profile(directory: str | Path, name: str) -> Profile:
    """Load ``directory/name.toml``, resolving one level of ``extends``.

    With ``extends``: the parent's [profile] keys are overridden by the child's, and each child
    [[register]] replaces the parent's register of the same name or is appended.
    """
    directory = Path(directory)
    path = directory / f"{name}.toml"
    data = _read_toml(path)
    head = dict(data.get("profile") or {})
    regs_raw = list(data.get("register") or [])
    parent = head.get("extends")
    if parent:
        parent_data = _read_toml(directory / f"{parent}.toml")
        if (parent_data.get("profile") or {}).get("extends"):
            raise ProfileError(f"{path}: extends {parent!r}, which itself extends (one level only)")
        merged_head = dict(parent_data.get("profile") or {})
        merged_head.update(head)
        head = merged_head
        by_name: dict[str, dict[str, Any]] = {}
        for raw in list(parent_data.get("register") or []) + regs_raw:
            by_name[str(raw.get("name"))] = raw  # dict keeps first-insertion order
        regs_raw = list(by_name.values())

    registers = tuple(_register(path, raw) for raw in regs_raw)
    seen: dict[int, str] = {}
    for reg in registers:
        for addr in range(reg.address, reg.address + reg.width):
            if addr in seen:
                raise ProfileError(f"{path}: {reg.name} overlaps {seen[addr]} at 0x{addr:04X}")
            seen[addr] = reg.name
    try:
        return Profile(
            name=str(head.get("name", name)),
            role=str(head.get("role", "")),
            module_type=int(head.get("module_type", 0)),
            default_address=int(head.get("default_address", 0)),
            read_only=bool(head.get("read_only", False)),
            service_period_ms=int(head.get("service_period_ms", 0)),
            function_codes=frozenset(int(fc) for fc in head.get("function_codes", (3, 6, 16))),
            max_read_registers=int(head.get("max_read_registers", 125)),
            deadman=bool(head.get("deadman", False)),
            deadman_window_ms=int(head.get("deadman_window_ms", 0)),
            registers=registers,
            meta=head,
        )
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: bad [profile] table: {exc}") from None


class RegisterBank:
    """Raw 16-bit words of one slave, keyed by address; only the profile's addresses exist.

    Values are stored raw, exactly as they travel on the wire: the firmware does no range checks.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._access: dict[int, str] = {}
        self._by_name: dict[str, RegisterDef] = {}
        for reg in profile.registers:
            self._by_name[reg.name] = reg
            for addr in range(reg.address, reg.address + reg.width):
                self._access[addr] = reg.access
        self.words: dict[int, int] = {}
        self.load_defaults()

    def load_defaults(self) -> None:
        words: dict[int, int] = {}
        for reg in self.profile.registers:
            for offset, word in enumerate(reg.default_words()):
                words[reg.address + offset] = word
        self.words = words

    # --- address-level access (the wire view) ---
    def mapped(self, address: int, count: int = 1) -> bool:
        return all(a in self._access for a in range(address, address + count))

    def writable(self, address: int, count: int = 1) -> bool:
        return all(self._access.get(a) in ("RW", "W") for a in range(address, address + count))

    def read(self, address: int, count: int) -> list[int]:
        return [self.words[a] for a in range(address, address + count)]

    def store(self, address: int, value: int) -> None:
        """Store a raw word; addresses the profile does not map are ignored."""
        if address in self._access:
            self.words[address] = value & 0xFFFF

    # --- name-level access (the firmware's view) ---
    def has(self, name: str) -> bool:
        return name in self._by_name

    def address_of(self, name: str) -> int | None:
        reg = self._by_name.get(name)
        return reg.address if reg else None

    def get(self, name: str) -> int:
        """Decoded value of a named register (sign/width applied); 0 when the profile lacks it."""
        reg = self._by_name.get(name)
        if reg is None:
            return 0
        low = self.words[reg.address]
        if reg.type == "u32":
            return low | (self.words[reg.address + 1] << 16)
        if reg.type == "i16" and low >= 0x8000:
            return low - 0x10000
        return low

    def set(self, name: str, value: int) -> None:
        """Encode and store a named register; silently nothing when the profile lacks it."""
        reg = self._by_name.get(name)
        if reg is None:
            return
        if reg.type == "u32":
            value &= 0xFFFFFFFF
            self.words[reg.address] = value & 0xFFFF
            self.words[reg.address + 1] = value >> 16
        else:
            self.words[reg.address] = value & 0xFFFF
