"""Properties of the register codec (drivers/profiles/codec.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.profiles import RegisterWriteRefused, decode, encode, raw_to_value, value_to_raw
from drivers.profiles.codec import raw_to_words, words_to_raw
from drivers.profiles.model import TYPE_RANGES, Register

SCALES = [1.0, 0.1, 0.01, 0.001, 0.5, 2.0, 10.0, 0.25]


@st.composite
def writable_registers(draw, bounded: bool | None = None):
    reg_type = draw(st.sampled_from(sorted(TYPE_RANGES)))
    scale = draw(st.sampled_from(SCALES))
    raw_lo, raw_hi, _ = TYPE_RANGES[reg_type]
    lo = hi = None
    if bounded is None:
        bounded = draw(st.booleans())
    if bounded:
        a = draw(st.integers(raw_lo, raw_hi))
        b = draw(st.integers(raw_lo, raw_hi))
        raw_min, raw_max = min(a, b), max(a, b)
        lo = float(Decimal(raw_min) * Decimal(repr(scale)))
        hi = float(Decimal(raw_max) * Decimal(repr(scale)))
    access = draw(st.sampled_from(["RW", "W"]))
    return Register("X", 0, type=reg_type, access=access, scale=scale, min=lo, max=hi)


def _raw_bounds(reg: Register) -> tuple[int, int]:
    step = Decimal(repr(reg.scale))
    lo = reg.raw_min if reg.min is None else int((Decimal(repr(reg.min)) / step).to_integral_value())
    hi = reg.raw_max if reg.max is None else int((Decimal(repr(reg.max)) / step).to_integral_value())
    return lo, hi


@given(reg=writable_registers(), data=st.data())
def test_round_trip_from_raw(reg, data):
    lo, hi = _raw_bounds(reg)
    raw = data.draw(st.integers(lo, hi))
    value = raw_to_value(reg, raw)
    words = encode(reg, value)
    assert len(words) == reg.width
    assert all(0 <= w <= 0xFFFF for w in words)
    assert words_to_raw(reg.type, words) == raw
    assert decode(reg, words) == value
    if reg.scale == 1:
        assert isinstance(value, int)
    else:
        assert isinstance(value, float)


@given(reg=writable_registers(), data=st.data())
def test_any_value_in_range_encodes_to_nearest_step(reg, data):
    lo, hi = _raw_bounds(reg)
    lo_v, hi_v = float(raw_to_value(reg, lo)), float(raw_to_value(reg, hi))
    value = data.draw(st.floats(lo_v, hi_v, allow_nan=False))
    try:
        words = encode(reg, value)
    except RegisterWriteRefused:
        # only legitimate near a bound that is not itself on the raw grid: rounding past it
        assume(False)
    back = decode(reg, words)
    assert abs(float(back) - value) <= reg.scale / 2 + 1e-9 * max(1.0, abs(value))
    if reg.min is not None:
        assert back >= reg.min
    if reg.max is not None:
        assert back <= reg.max


@given(reg=writable_registers(bounded=True), excess=st.floats(1e-6, 1e9, allow_nan=False))
def test_values_outside_min_max_are_refused(reg, excess):
    with pytest.raises(RegisterWriteRefused) as info:
        encode(reg, reg.max + excess)
    assert info.value.code == "REGISTER_WRITE_REFUSED" and info.value.hint
    with pytest.raises(RegisterWriteRefused):
        encode(reg, reg.min - excess)


@given(reg=writable_registers(bounded=False), steps=st.integers(1, 10**6))
def test_values_outside_raw_type_range_are_refused(reg, steps):
    over = float(Decimal(reg.raw_max + steps) * Decimal(repr(reg.scale)))
    under = float(Decimal(reg.raw_min - steps) * Decimal(repr(reg.scale)))
    with pytest.raises(RegisterWriteRefused):
        encode(reg, over)
    with pytest.raises(RegisterWriteRefused):
        encode(reg, under)


@given(reg_type=st.sampled_from(sorted(TYPE_RANGES)), data=st.data())
def test_words_raw_round_trip(reg_type, data):
    lo, hi, width = TYPE_RANGES[reg_type]
    raw = data.draw(st.integers(lo, hi))
    words = raw_to_words(reg_type, raw)
    assert len(words) == width
    assert words_to_raw(reg_type, words) == raw


@pytest.mark.parametrize(
    ("reg_type", "raw", "words"),
    [
        ("i16", -32768, [0x8000]),
        ("i16", -1, [0xFFFF]),
        ("i16", 32767, [0x7FFF]),
        ("i16", 0, [0x0000]),
        ("u16", 65535, [0xFFFF]),
        ("u32", 0x12345678, [0x5678, 0x1234]),  # LOW word first
        ("u32", 0xFFFF_FFFF, [0xFFFF, 0xFFFF]),
        ("u32", 0x0001_0000, [0x0000, 0x0001]),
    ],
)
def test_edge_values(reg_type, raw, words):
    reg = Register("X", 0, type=reg_type, access="RW")
    assert encode(reg, raw) == words
    assert decode(reg, words) == raw


@pytest.mark.parametrize(
    ("reg_type", "bad"),
    [
        ("i16", 32768),
        ("i16", -32769),
        ("u16", -1),
        ("u16", 65536),
        ("u32", -1),
        ("u32", 2**32),
    ],
)
def test_edge_values_just_outside_are_refused(reg_type, bad):
    with pytest.raises(RegisterWriteRefused):
        encode(Register("X", 0, type=reg_type, access="RW"), bad)


def test_scaled_decode_is_exact():
    reg = Register("V", 0, scale=0.1, unit="V")
    assert decode(reg, [240]) == 24.0
    assert decode(reg, [3]) == 0.3
    assert encode(Register("V", 0, access="RW", scale=0.1), 0.3) == [3]


def test_rounds_to_nearest_raw_step():
    reg = Register("V", 0, access="RW", scale=0.1, min=0, max=60)
    assert encode(reg, 24.04) == [240]
    assert encode(reg, 24.06) == [241]


def test_bound_is_checked_after_rounding_too():
    reg = Register("V", 0, access="RW", scale=0.1, min=0, max=0.15)
    assert encode(reg, 0.1) == [1]
    assert encode(reg, 0.149) == [1]  # rounds down, stays inside
    with pytest.raises(RegisterWriteRefused):
        encode(reg, 0.151)  # outside before rounding, even though 1.51 -> 2 is not the point


def test_value_rounding_past_max_is_refused():
    reg = Register("V", 0, access="RW", scale=0.1, min=0, max=0.15)
    with pytest.raises(RegisterWriteRefused):
        encode(reg, 0.15)  # 1.5 rounds (half-even) to 2 = 0.2 > max


def test_read_only_register_refused():
    with pytest.raises(RegisterWriteRefused):
        encode(Register("X", 0, access="R"), 1)


def test_read_only_profile_flag_refuses():
    with pytest.raises(RegisterWriteRefused):
        encode(Register("X", 0, access="RW"), 1, read_only=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1", None, [1]])
def test_non_numbers_refused(value):
    with pytest.raises(RegisterWriteRefused):
        value_to_raw(Register("X", 0, access="RW"), value)


@pytest.mark.parametrize(
    ("reg_type", "words"),
    [
        ("u16", []),
        ("u16", [1, 2]),
        ("u32", [1]),
        ("u16", [0x10000]),
        ("i16", [-1]),
    ],
)
def test_decode_rejects_bad_words(reg_type, words):
    with pytest.raises(ValueError):
        decode(Register("X", 0, type=reg_type), words)
