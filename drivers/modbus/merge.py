"""Read-merge planner: turn a set of wanted registers into as few Modbus reads as possible.

On this bus every request costs a fixed price (turnaround, and on SAFE-FW up to a 100 ms service
period) while each extra register in a reply costs about 0.2 ms at 115200 baud. So reads are
merged: contiguous addresses always, small gaps only when every address in the gap is known to
be readable, because one unreadable address makes the slave answer the whole read with an
exception and the wanted values are lost with it.

The planner is greedy from the lowest address, extending each block as far as the cap and the
gap rule allow. That is optimal: the first block of any plan cannot reach further than the
greedy one, and a block that starts later can only reach further, so by induction no plan needs
fewer blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.profiles.model import Profile, Register

ReadBlock = tuple[int, int]  # (start address, register count)

MODBUS_MAX_READ = 125  # protocol limit for function codes 3 and 4
_ADDRESS_SPACE = 0x10000


def _plan_spans(
    spans: Iterable[tuple[int, int]],
    *,
    max_registers: int,
    max_gap: int,
    readable: Callable[[int], bool] | None,
) -> list[ReadBlock]:
    """Merge (start, width) spans that must each be read whole into blocks."""
    if not 1 <= max_registers <= MODBUS_MAX_READ:
        raise ValueError(f"max_registers must be 1..{MODBUS_MAX_READ}, got {max_registers}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    ordered = sorted(set(spans))
    for start, width in ordered:
        if start < 0 or width < 1 or start + width > _ADDRESS_SPACE:
            raise ValueError(f"span (0x{start:04X}, {width}) is outside the register space")
        if width > max_registers:
            raise ValueError(f"a {width}-register value cannot fit reads of {max_registers}")
    blocks: list[ReadBlock] = []
    block_start = block_end = -1  # block_end is inclusive
    for start, width in ordered:
        end = start + width - 1
        if blocks and start <= block_end:
            # overlaps or duplicates a span already in the block: only its tail may be new
            if end <= block_end:
                continue
            if end - block_start + 1 <= max_registers:
                block_end = end
                blocks[-1] = (block_start, block_end - block_start + 1)
                continue
            raise ValueError(f"span (0x{start:04X}, {width}) straddles a block boundary")
        gap = start - block_end - 1
        if (
            blocks
            and end - block_start + 1 <= max_registers
            and (
                gap == 0
                or (
                    0 < gap <= max_gap
                    and readable is not None
                    and all(readable(a) for a in range(block_end + 1, start))
                )
            )
        ):
            block_end = end
            blocks[-1] = (block_start, block_end - block_start + 1)
            continue
        block_start, block_end = start, end
        blocks.append((block_start, width))
    return blocks


def plan_reads(
    addresses: Iterable[int],
    *,
    max_registers: int,
    max_gap: int = 0,
    readable: Callable[[int], bool] | None = None,
) -> list[ReadBlock]:
    """Sorted, disjoint (start, count) reads covering every address once, count <= max_registers.

    Gaps of up to `max_gap` unrequested addresses are read through only when `readable(addr)` is
    true for every one of them; with `readable=None` nothing is bridged.
    """
    return _plan_spans(((a, 1) for a in addresses), max_registers=max_registers, max_gap=max_gap, readable=readable)


def plan_register_reads(
    registers: Iterable[Register],
    *,
    max_registers: int,
    max_gap: int = 0,
    readable: Callable[[int], bool] | None = None,
) -> list[ReadBlock]:
    """Like `plan_reads`, but keeps both words of a u32 in the same block."""
    return _plan_spans(
        ((r.address, r.width) for r in registers), max_registers=max_registers, max_gap=max_gap, readable=readable
    )


def plan_poll(profile: Profile, group: str, *, max_gap: int | None = None) -> list[ReadBlock]:
    """Read plan for one poll group of a profile.

    By default any readable gap that fits the profile's read cap is bridged (see the module
    docstring for why that is almost always cheaper); pass `max_gap=0` to read only what is
    asked for.
    """
    cap = profile.max_read_registers
    return plan_register_reads(
        profile.poll_registers(group),
        max_registers=cap,
        max_gap=cap if max_gap is None else max_gap,
        readable=profile.is_readable,
    )
