"""Immutable register-map model: one `Profile` per firmware variant, made of `Register`s.

Register maps are data, not code, because the OHT-50 slaves disagree with every map the old
master shipped: the right map can only be chosen after reading a module's identity block, and
adding a firmware variant must not need a code change. Everything here is frozen and hashable so
that a profile can be shared between the bus task, the safety supervisor and the API without
anyone mutating it underneath the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from drivers.profiles.errors import UnknownRegister

RegisterType = Literal["u16", "i16", "u32"]
Access = Literal["R", "RW", "W"]
PollGroup = Literal["fast", "config", "slow", "identity", "none"]
Role = Literal["power", "safety", "travel", "dock"]

#: raw value range and width (in 16-bit registers) of each register type
TYPE_RANGES: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "u16": (0, 0xFFFF, 1),
        "i16": (-0x8000, 0x7FFF, 1),
        "u32": (0, 0xFFFF_FFFF, 2),
    }
)
ACCESS_MODES: frozenset[str] = frozenset({"R", "RW", "W"})
POLL_GROUPS: frozenset[str] = frozenset({"fast", "config", "slow", "identity", "none"})
ROLES: frozenset[str] = frozenset({"power", "safety", "travel", "dock"})
UNITS: frozenset[str] = frozenset(
    {"", "V", "mV", "A", "mA", "mAh", "W", "%", "%/s", "mm", "cm", "mm/s", "degC", "ms", "s", "min", "h"}
)


@dataclass(frozen=True, slots=True)
class Register:
    """One named value in a slave's holding-register space.

    `min`/`max` bound what may be *written* (engineering units); `None` means the whole range of
    the raw type. `default` is the raw power-on value, which the simulator serves at start.
    """

    name: str
    address: int
    type: RegisterType = "u16"
    access: Access = "R"
    scale: float = 1.0
    unit: str = ""
    min: float | None = None
    max: float | None = None
    default: int = 0
    safety: bool = False
    poll: PollGroup = "slow"
    description: str = ""

    @property
    def width(self) -> int:
        """Number of 16-bit registers occupied (2 for u32)."""
        return TYPE_RANGES[self.type][2]

    @property
    def end(self) -> int:
        """Last address occupied (inclusive)."""
        return self.address + self.width - 1

    @property
    def addresses(self) -> range:
        return range(self.address, self.address + self.width)

    @property
    def readable(self) -> bool:
        return self.access in ("R", "RW")

    @property
    def writable(self) -> bool:
        return self.access in ("RW", "W")

    @property
    def raw_min(self) -> int:
        return TYPE_RANGES[self.type][0]

    @property
    def raw_max(self) -> int:
        return TYPE_RANGES[self.type][1]


@dataclass(frozen=True, slots=True)
class Profile:
    """A register map for one module type and a range of its firmware versions."""

    name: str
    role: Role
    module_type: int
    firmware_min: int
    firmware_max: int
    default_address: int
    turnaround_ms: int
    service_period_ms: int
    function_codes: tuple[int, ...]
    max_read_registers: int
    registers: tuple[Register, ...]
    description: str = ""
    read_only: bool = False
    deadman: bool = False
    deadman_window_ms: int = 0
    extends: str | None = None
    _by_name: Mapping[str, Register] = field(init=False, repr=False, compare=False, hash=False)
    _by_address: Mapping[int, Register] = field(init=False, repr=False, compare=False, hash=False)
    _poll_groups: Mapping[str, tuple[Register, ...]] = field(init=False, repr=False, compare=False, hash=False)
    _poll_names: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Registers are kept sorted by address so that plans, listings and snapshots are stable.
        ordered = tuple(sorted(self.registers, key=lambda r: (r.address, r.name)))
        object.__setattr__(self, "registers", ordered)
        object.__setattr__(self, "function_codes", tuple(self.function_codes))
        by_address: dict[int, Register] = {}
        for reg in ordered:
            for addr in reg.addresses:
                by_address.setdefault(addr, reg)
        object.__setattr__(self, "_by_name", MappingProxyType({r.name: r for r in ordered}))
        object.__setattr__(self, "_by_address", MappingProxyType(by_address))
        # Asked for on every control tick and every status request: worked out once.
        groups: dict[str, list[Register]] = {}
        for reg in ordered:
            if reg.readable:
                groups.setdefault(reg.poll, []).append(reg)
        object.__setattr__(self, "_poll_groups", MappingProxyType({g: tuple(rs) for g, rs in groups.items()}))
        object.__setattr__(
            self, "_poll_names", MappingProxyType({g: tuple(r.name for r in rs) for g, rs in groups.items()})
        )

    def register(self, name: str) -> Register:
        """The register called `name`; raises `UnknownRegister` (a KeyError) otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownRegister(
                f"profile {self.name!r} has no register {name!r}",
                hint=f"check the register name against config/profiles/{self.name}.toml",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def by_address(self, address: int) -> Register | None:
        """The register occupying `address` (either word of a u32), or None when unmapped."""
        return self._by_address.get(address)

    def is_readable(self, address: int) -> bool:
        """True when reading `address` is known to be safe: it belongs to a readable register.

        Unmapped addresses are *not* readable: a firmware may answer them with exception 02 and
        spoil a whole merged read.
        """
        reg = self._by_address.get(address)
        return reg is not None and reg.readable

    def readable_addresses(self) -> frozenset[int]:
        """Every address occupied by a readable register."""
        return frozenset(a for a, r in self._by_address.items() if r.readable)

    def poll_registers(self, group: str) -> tuple[Register, ...]:
        """Readable registers of a poll group, in address order."""
        return self._poll_groups.get(group, ())

    def poll_names(self, group: str) -> tuple[str, ...]:
        """Names of the readable registers of a poll group, in address order."""
        return self._poll_names.get(group, ())

    def accepts_firmware(self, version: int) -> bool:
        return self.firmware_min <= version <= self.firmware_max

    def decode_block(self, start_address: int, words: Sequence[int]) -> dict[str, int | float]:
        """Decode the readable registers lying entirely inside a read of `words` at `start_address`.

        Registers only partly inside the block (one word of a u32) are left out rather than
        decoded from half a value.
        """
        from drivers.profiles.codec import decode  # codec imports this module

        end = start_address + len(words)  # exclusive
        out: dict[str, int | float] = {}
        for reg in self.registers:
            if reg.readable and reg.address >= start_address and reg.end < end:
                offset = reg.address - start_address
                out[reg.name] = decode(reg, words[offset : offset + reg.width])
        return out
