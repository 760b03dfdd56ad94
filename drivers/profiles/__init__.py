"""Register maps as data: profiles loaded from TOML, the codec, and identity-based selection."""

from drivers.profiles.codec import decode, encode, plan_write, raw_to_value, value_to_raw
from drivers.profiles.errors import (
    Problem,
    ProfileError,
    RegisterWriteRefused,
    UnknownModule,
    UnknownRegister,
)
from drivers.profiles.identity import IDENTITY_COUNT, IDENTITY_START, Identity, select_profile
from drivers.profiles.loader import load_profile, load_profiles
from drivers.profiles.model import Profile, Register

__all__ = [
    "IDENTITY_COUNT",
    "IDENTITY_START",
    "Identity",
    "Problem",
    "Profile",
    "ProfileError",
    "Register",
    "RegisterWriteRefused",
    "UnknownModule",
    "UnknownRegister",
    "decode",
    "encode",
    "load_profile",
    "load_profiles",
    "plan_write",
    "raw_to_value",
    "select_profile",
    "value_to_raw",
]
