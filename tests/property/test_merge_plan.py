"""Properties of the read-merge planner (drivers/modbus/merge.py)."""

from __future__ import annotations

import functools
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.merge import plan_poll, plan_reads, plan_register_reads
from drivers.profiles import load_profiles
from drivers.profiles.model import Register

PROFILES_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"

addresses_st = st.one_of(
    st.sets(st.integers(0, 200), max_size=80),
    st.sets(st.integers(0xFF00, 0xFFFF), max_size=40),  # top of the address space
)


def _check_basic(blocks, wanted, cap, readable):
    # sorted and disjoint, within the cap and the address space
    for (s1, c1), (s2, _c2) in pairwise(blocks):
        assert s1 + c1 <= s2
    for start, count in blocks:
        assert 1 <= count <= cap
        assert 0 <= start and start + count <= 0x10000
    covered = [a for s, c in blocks for a in range(s, s + c)]
    # every requested address read exactly once
    assert len(covered) == len(set(covered))
    assert set(wanted) <= set(covered)
    # every extra (bridged) address is readable
    extra = set(covered) - set(wanted)
    if readable is None:
        assert not extra
    else:
        assert all(readable(a) for a in extra)
    # a block never starts or ends on an address nobody asked for
    for start, count in blocks:
        assert start in wanted and start + count - 1 in wanted


def _reference_runs(wanted, cap):
    """Blocks needed without bridging: each contiguous run split by the cap."""
    total, run = 0, 0
    prev = None
    for a in sorted(wanted):
        if prev is not None and a == prev + 1:
            run += 1
        else:
            total += -(-run // cap) if run else 0
            run = 1
        prev = a
    return total + (-(-run // cap) if run else 0)


def _reference_min_blocks(wanted, cap, max_gap, readable):
    """Exhaustive optimum by dynamic programming over the sorted requested addresses."""
    addrs = sorted(wanted)
    n = len(addrs)

    @functools.cache
    def best(i: int) -> int:
        if i == n:
            return 0
        result = n + 1
        for j in range(i, n):  # block covering addrs[i..j]
            if addrs[j] - addrs[i] + 1 > cap:
                break
            if j > i:
                gap = addrs[j] - addrs[j - 1] - 1
                if gap and (
                    readable is None or gap > max_gap or not all(readable(a) for a in range(addrs[j - 1] + 1, addrs[j]))
                ):
                    break
            result = min(result, 1 + best(j + 1))
        return result

    return best(0)


@given(wanted=addresses_st, cap=st.integers(1, 125))
def test_no_gap_plan_is_exact_and_minimal(wanted, cap):
    blocks = plan_reads(wanted, max_registers=cap)
    _check_basic(blocks, wanted, cap, None)
    assert sum(c for _, c in blocks) == len(wanted)  # nothing extra read
    assert len(blocks) == _reference_runs(wanted, cap)


@given(
    wanted=st.sets(st.integers(0, 120), max_size=40),
    readable_set=st.sets(st.integers(0, 120)),
    cap=st.integers(1, 40),
    max_gap=st.integers(0, 12),
)
@settings(max_examples=300)
def test_bridging_plan_is_valid_and_optimal(wanted, readable_set, cap, max_gap):
    readable = readable_set.__contains__
    blocks = plan_reads(wanted, max_registers=cap, max_gap=max_gap, readable=readable)
    _check_basic(blocks, wanted, cap, readable)
    # bridged gaps never exceed max_gap
    for start, count in blocks:
        inside = sorted(a for a in wanted if start <= a < start + count)
        for a, b in pairwise(inside):
            assert b - a - 1 <= max_gap
    assert len(blocks) == _reference_min_blocks(frozenset(wanted), cap, max_gap, readable)
    assert len(blocks) <= _reference_runs(wanted, cap)


@given(wanted=st.sets(st.integers(0, 100), max_size=40), cap=st.integers(1, 30), max_gap=st.integers(1, 10))
def test_no_bridging_without_readable(wanted, cap, max_gap):
    blocks = plan_reads(wanted, max_registers=cap, max_gap=max_gap, readable=None)
    assert sum(c for _, c in blocks) == len(wanted)


@st.composite
def _register_layouts(draw):
    """Non-overlapping u16/u32 registers."""
    regs, addr = [], draw(st.integers(0, 5))
    for i in range(draw(st.integers(0, 30))):
        reg_type = draw(st.sampled_from(["u16", "u32"]))
        regs.append(Register(name=f"R{i}", address=addr, type=reg_type))
        addr += (2 if reg_type == "u32" else 1) + draw(st.integers(0, 4))
    return regs


@given(regs=_register_layouts(), cap=st.integers(2, 12), max_gap=st.integers(0, 4), data=st.data())
def test_u32_words_stay_in_one_block(regs, cap, max_gap, data):
    occupied = {a for r in regs for a in r.addresses}
    readable_set = data.draw(st.sets(st.sampled_from(sorted(occupied)))) if occupied else set()
    blocks = plan_register_reads(regs, max_registers=cap, max_gap=max_gap, readable=readable_set.__contains__)
    _check_basic(blocks, occupied, cap, readable_set.__contains__)
    for reg in regs:
        holding = [b for b in blocks if b[0] <= reg.address and reg.end < b[0] + b[1]]
        assert len(holding) == 1, f"{reg} split across blocks {blocks}"


def test_cap_split_moves_whole_u32_to_next_block():
    regs = [Register("A", 0), Register("B", 1, type="u32")]
    # A+B would need 3 registers; with a cap of 2 the u32 must not be split as (0,2),(2,1)
    assert plan_register_reads(regs, max_registers=2) == [(0, 1), (1, 2)]


def test_bridges_only_readable_gaps():
    readable = {5, 6}.__contains__
    assert plan_reads([4, 7], max_registers=10, max_gap=2, readable=readable) == [(4, 4)]
    assert plan_reads([4, 8], max_registers=10, max_gap=3, readable=readable) == [(4, 1), (8, 1)]
    assert plan_reads([4, 7], max_registers=10, max_gap=1, readable=readable) == [(4, 1), (7, 1)]
    assert plan_reads([4, 7], max_registers=3, max_gap=2, readable=readable) == [(4, 1), (7, 1)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_registers": 0},
        {"max_registers": 126},
        {"max_registers": 10, "max_gap": -1},
    ],
)
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        plan_reads([1, 2], **kwargs)


@pytest.mark.parametrize("bad", [-1, 0x10000])
def test_rejects_addresses_outside_register_space(bad):
    with pytest.raises(ValueError):
        plan_reads([bad], max_registers=10)


def test_u32_wider_than_cap_is_refused():
    with pytest.raises(ValueError):
        plan_register_reads([Register("A", 0, type="u32")], max_registers=1)


@pytest.mark.parametrize("group", ["fast", "slow", "identity"])
def test_shipped_profile_poll_plans(group):
    for profile in load_profiles(PROFILES_DIR).values():
        regs = profile.poll_registers(group)
        for max_gap in (None, 0):
            blocks = plan_poll(profile, group, max_gap=max_gap)
            wanted = {a for r in regs for a in r.addresses}
            _check_basic(blocks, wanted, profile.max_read_registers, profile.is_readable)
            for reg in regs:
                assert sum(1 for s, c in blocks if s <= reg.address and reg.end < s + c) == 1
