"""Raw words <-> engineering values, and the checks that guard every write.

Scaling goes through `Decimal` built from the shortest repr of the scale, so that 240 raw at
scale 0.1 is exactly 24.0 (not 24.000000000000004) and a value written and read back compares
equal. All write checks happen here, before anything reaches the bus: a refused write must
change nothing on the robot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from numbers import Real

from drivers.profiles.errors import RegisterWriteRefused, UnknownRegister
from drivers.profiles.model import Profile, Register

Value = int | float


def _dec(x: float | int) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def words_to_raw(reg_type: str, words: Sequence[int]) -> int:
    """Combine register words into the raw integer (u32: LOW word first, as the firmware sends)."""
    for w in words:
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 0xFFFF:
            raise ValueError(f"register word out of 0..0xFFFF: {w!r}")
    if reg_type == "u16":
        _expect(words, 1)
        return words[0]
    if reg_type == "i16":
        _expect(words, 1)
        return words[0] - 0x10000 if words[0] & 0x8000 else words[0]
    if reg_type == "u32":
        _expect(words, 2)
        return words[0] | (words[1] << 16)
    raise ValueError(f"unknown register type {reg_type!r}")


def raw_to_words(reg_type: str, raw: int) -> list[int]:
    """Split a raw integer into register words; inverse of `words_to_raw`."""
    if reg_type == "u16":
        _check_raw(raw, 0, 0xFFFF)
        return [raw]
    if reg_type == "i16":
        _check_raw(raw, -0x8000, 0x7FFF)
        return [raw & 0xFFFF]
    if reg_type == "u32":
        _check_raw(raw, 0, 0xFFFF_FFFF)
        return [raw & 0xFFFF, raw >> 16]
    raise ValueError(f"unknown register type {reg_type!r}")


def _expect(words: Sequence[int], n: int) -> None:
    if len(words) != n:
        raise ValueError(f"expected {n} register word(s), got {len(words)}")


def _check_raw(raw: int, lo: int, hi: int) -> None:
    if not lo <= raw <= hi:
        raise ValueError(f"raw value {raw} outside {lo}..{hi}")


def raw_to_value(register: Register, raw: int) -> Value:
    """Apply the register's scale; an int when the scale is 1 (counts, flags, enums stay ints)."""
    if register.scale == 1:
        return raw
    return float(Decimal(raw) * _dec(register.scale))


def decode(register: Register, raw_words: Sequence[int]) -> Value:
    """Engineering value of `register` from the words read at its address."""
    return raw_to_value(register, words_to_raw(register.type, raw_words))


def _refuse(register: Register, message: str, hint: str) -> RegisterWriteRefused:
    return RegisterWriteRefused(f"write to {register.name}: {message}", hint=hint)


def value_to_raw(register: Register, value: object) -> int:
    """Raw integer for an engineering `value`, rounded to the nearest raw step.

    Checks the value against the register's min..max (both before and after rounding, so a
    value that rounds past a bound is refused too) and against the raw type range. Does not
    check access: that is `encode`'s job.
    """
    if isinstance(value, bool):
        value = int(value)
    # float before Real: mypy does not see float as a numbers.Real, so the finite check must
    # come while the type is still plain.
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(register, f"value {value!r} is not finite", "send a finite number")
    if not isinstance(value, (int, float, Real)):
        raise _refuse(register, f"value {value!r} is not a number", "send a number")
    try:
        wanted = _dec(value) if isinstance(value, (int, float)) else Decimal(str(value))
        raw_dec = (wanted / _dec(register.scale)).to_integral_value(rounding=ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError) as exc:  # pragma: no cover - exotic Real subclasses
        raise _refuse(register, f"value {value!r} cannot be converted", "send a plain number") from exc
    raw = int(raw_dec)
    written = Decimal(raw) * _dec(register.scale)
    lo = _dec(register.min) if register.min is not None else None
    hi = _dec(register.max) if register.max is not None else None
    range_text = _range_text(register)
    for candidate in (wanted, written):
        if (lo is not None and candidate < lo) or (hi is not None and candidate > hi):
            raise _refuse(
                register,
                f"value {value!r} outside the allowed range {range_text}",
                f"{register.name} accepts {range_text}",
            )
    if not register.raw_min <= raw <= register.raw_max:
        raise _refuse(
            register,
            f"value {value!r} (raw {raw}) does not fit a {register.type} register",
            f"{register.name} accepts {range_text}",
        )
    return raw


def _range_text(register: Register) -> str:
    lo = register.min if register.min is not None else raw_to_value(register, register.raw_min)
    hi = register.max if register.max is not None else raw_to_value(register, register.raw_max)
    unit = f" {register.unit}" if register.unit else ""
    return f"{lo}..{hi}{unit}"


def encode(register: Register, value: object, *, read_only: bool = False) -> list[int]:
    """Words to write for `value`, or `RegisterWriteRefused`.

    `read_only` is the owning profile's flag (a register does not know its profile); use
    `plan_write` to have it taken from the profile.
    """
    if read_only:
        raise _refuse(
            register,
            "the module's profile is read-only",
            "this module's register map is not verified; writes stay disabled until it is",
        )
    if not register.writable:
        raise _refuse(
            register, f"register is {register.access} (not writable)", "only RW and W registers can be written"
        )
    return raw_to_words(register.type, value_to_raw(register, value))


def plan_write(profile: Profile, name: str, value: object) -> tuple[int, list[int]]:
    """(address, words) for writing `value` to register `name` of `profile`; every check first."""
    try:
        register = profile.register(name)
    except UnknownRegister as exc:
        raise RegisterWriteRefused(exc.message, hint=exc.hint) from None
    return register.address, encode(register, value, read_only=profile.read_only)
