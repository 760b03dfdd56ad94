"""The identity block (0x0100-0x0109) and profile selection from it.

Every OHT-50 slave firmware seen so far serves the same ten identity registers, while the rest of
its map differs per firmware. So discovery reads this block first and picks the register map by
(MODULE_TYPE, FIRMWARE_VERSION). If no profile matches, or more than one does, the module is
refused: a guessed map is how the old master wrote its E-stop to a motor's direction register.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from drivers.profiles.errors import Problem, ProfileError, UnknownModule
from drivers.profiles.model import Profile

IDENTITY_START = 0x0100
IDENTITY_COUNT = 10


@dataclass(frozen=True, slots=True)
class Identity:
    """Decoded identity block of one slave."""

    device_id: int
    baud_code: int
    parity: int
    stop_bits: int
    module_type: int
    firmware_version: int
    hardware_version: int
    system_status: int
    system_error: int

    @classmethod
    def from_words(cls, words: Sequence[int]) -> Identity:
        """Decode the words read from 0x0100 (10, or 9 without the write-only reset command)."""
        if len(words) not in (IDENTITY_COUNT, IDENTITY_COUNT - 1):
            raise ValueError(f"identity block needs {IDENTITY_COUNT} words, got {len(words)}")
        for w in words:
            if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 0xFFFF:
                raise ValueError(f"identity word out of 0..0xFFFF: {w!r}")
        return cls(*words[:9])

    @property
    def firmware_text(self) -> str:
        """Human form of FIRMWARE_VERSION: the two bytes as hex digits, 0x0101 -> "1.01"."""
        return _version_text(self.firmware_version)

    @property
    def hardware_text(self) -> str:
        return _version_text(self.hardware_version)


def _version_text(version: int) -> str:
    return f"{version >> 8:X}.{version & 0xFF:02X}"


def select_profile(identity: Identity, profiles: Iterable[Profile] | Mapping[str, Profile]) -> Profile:
    """The one profile matching the module type and firmware version, or an error. Never a guess."""
    candidates = profiles.values() if isinstance(profiles, Mapping) else profiles
    matches = [
        p for p in candidates if p.module_type == identity.module_type and p.accepts_firmware(identity.firmware_version)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownModule(
            f"no register profile for module type {identity.module_type} with firmware "
            f"{identity.firmware_text} (0x{identity.firmware_version:04X}) at address {identity.device_id}",
            hint=(
                "add a profile to config/profiles/ with this module_type and a firmware_min..firmware_max "
                "range covering this version, after checking its register map on the hardware"
            ),
        )
    names = ", ".join(sorted(p.name for p in matches))
    raise ProfileError(
        [
            Problem(
                "config/profiles",
                "profile.firmware_min",
                f"profiles {names} all match module type {identity.module_type} firmware "
                f"0x{identity.firmware_version:04X}",
            )
        ],
        hint=f"narrow the firmware ranges of {names} so exactly one matches",
    )
