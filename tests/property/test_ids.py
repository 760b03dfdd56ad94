"""UUIDv7 ids: unique, well-formed, and in creation order within a process, whatever the clock."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ids import UUIDv7Generator, new_id, timestamp_ms

CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def check_well_formed(ids: list[str]) -> None:
    for value in ids:
        assert CANONICAL.match(value), value
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=1, max_value=3000))
def test_ids_are_unique_and_sorted_in_creation_order(n: int) -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(n)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == n
    assert ids == sorted(ids)
    check_well_formed(ids[:50])
    # Timestamps follow the clock (and can run ahead by borrowed milliseconds only).
    assert before <= timestamp_ms(ids[0]) and timestamp_ms(ids[-1]) <= after + n // 2048 + 1


@settings(max_examples=20, deadline=None)
@given(threads=st.integers(min_value=2, max_value=8), per_thread=st.integers(min_value=1, max_value=500))
def test_ids_from_many_threads_are_unique_and_ordered(threads: int, per_thread: int) -> None:
    """Creation order across threads is made observable by taking ids under one lock."""
    in_order: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            with lock:
                in_order.append(new_id())

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(set(in_order)) == threads * per_thread
    assert in_order == sorted(in_order)


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=-5_000, max_value=5), min_size=1, max_size=40),
    burst=st.integers(min_value=1, max_value=6000),
)
def test_order_survives_a_clock_that_stalls_or_steps_back(steps: list[int], burst: int) -> None:
    """A stalled clock overflows the 12-bit counter; a clock stepping back must not reorder."""
    now = [1_700_000_000_000]

    def clock_ns() -> int:
        return now[0] * 1_000_000

    gen = UUIDv7Generator(clock_ns=clock_ns)
    ids = []
    for step in steps:
        now[0] += step
        ids.extend(gen.new_id() for _ in range(burst // len(steps) + 1))
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    check_well_formed(ids[:20])


def test_random_bits_come_from_the_random_source() -> None:
    """With the same clock and the same random bytes two generators agree; the randomness,
    not the clock, is what makes ids from different processes differ."""

    def clock() -> int:
        return 1_700_000_000_000 * 1_000_000

    def constant(n: int) -> bytes:
        return b"\x5a" * n

    a = UUIDv7Generator(clock_ns=clock, random_bytes=constant)
    b = UUIDv7Generator(clock_ns=clock, random_bytes=constant)
    assert a.new_id() == b.new_id()
    c = UUIDv7Generator(clock_ns=clock)
    d = UUIDv7Generator(clock_ns=clock)
    assert len({c.new_id() for _ in range(100)} | {d.new_id() for _ in range(100)}) == 200


def test_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id()  # fill the parent's random pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        os.write(write, "\n".join(new_id() for _ in range(200)).encode())
        os._exit(0)
    os.close(write)
    parent_ids = {new_id() for _ in range(200)}
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    child_ids = set(b"".join(chunks).decode().split("\n"))
    assert len(child_ids) == 200
    assert not parent_ids & child_ids
