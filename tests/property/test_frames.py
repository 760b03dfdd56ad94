"""Properties of the RTU codec: CRC, request encoding, and reply checking against mutations."""

from __future__ import annotations

import struct

from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.modbus.crc import append_crc, crc16, crc_ok
from drivers.modbus.frames import (
    READ_HOLDING,
    READ_INPUT,
    WRITE_MULTIPLE,
    WRITE_SINGLE,
    ReplyVerdict,
    Request,
    check_reply,
    frame_length,
)
from drivers.sim import rtu as sim_rtu  # the simulator's independent codec cross-checks ours

slaves = st.integers(1, 247)
addresses = st.integers(0, 0xFFFF - 125)
words = st.integers(0, 0xFFFF)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from([READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE]))
    slave, address = draw(slaves), draw(addresses)
    if kind in (READ_HOLDING, READ_INPUT):
        return Request(slave, kind, address, draw(st.integers(1, 125)))
    if kind == WRITE_SINGLE:
        return Request(slave, kind, address, 1, (draw(words),))
    values = tuple(draw(st.lists(words, min_size=1, max_size=123)))
    return Request(slave, kind, address, len(values), values)


def good_reply(req: Request, data: list[int]) -> bytes:
    if req.function in (READ_HOLDING, READ_INPUT):
        regs = (data * req.count)[: req.count] if data else [0] * req.count
        return append_crc(struct.pack(f">BBB{req.count}H", req.slave, req.function, 2 * req.count, *regs))
    return req.encode()[:6] + append_crc(req.encode()[:6])[-2:]


def test_crc_known_vector() -> None:
    # Read holding registers slave 1, address 0, count 10: a widely published frame "01 03 00 00 00 0A C5 CD".
    assert append_crc(bytes.fromhex("01030000000A")).hex() == "01030000000ac5cd"


@given(st.binary(min_size=1, max_size=256))
def test_crc_round_trip(body: bytes) -> None:
    frame = append_crc(body)
    assert crc_ok(frame)
    assert crc16(frame) == 0  # the CRC over a frame including its own CRC is zero


@given(st.binary(min_size=1, max_size=64), st.data())
def test_crc_detects_every_single_bit_flip(body: bytes, data: st.DataObject) -> None:
    frame = bytearray(append_crc(body))
    bit = data.draw(st.integers(0, 8 * len(frame) - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    assert not crc_ok(frame)


@given(requests())
def test_request_round_trip_through_the_simulators_codec(req: Request) -> None:
    frame = req.encode()
    assert crc_ok(frame)
    parsed = sim_rtu.parse_request(frame)
    assert parsed is not None
    assert (parsed.unit, parsed.function, parsed.address) == (req.slave, req.function, req.address)
    if req.function in (READ_HOLDING, READ_INPUT):
        assert parsed.count == req.count
    else:
        assert tuple(parsed.values) == req.values


@given(requests(), st.lists(words, max_size=8))
def test_well_formed_reply_accepted(req: Request, data: list[int]) -> None:
    reply = good_reply(req, data)
    assert frame_length(reply) == len(reply)
    checked = check_reply(req, reply)
    assert checked.verdict is ReplyVerdict.OK
    if req.is_write:
        assert checked.registers == req.values


@given(requests(), st.lists(words, max_size=8), st.data())
def test_any_mutation_without_crc_fix_is_rejected(req: Request, data: list[int], draw: st.DataObject) -> None:
    reply = bytearray(good_reply(req, data))
    i = draw.draw(st.integers(0, len(reply) - 1))
    delta = draw.draw(st.integers(1, 255))
    reply[i] ^= delta
    assert check_reply(req, bytes(reply)).verdict is not ReplyVerdict.OK


@given(requests(), st.lists(words, max_size=8), st.data())
def test_header_mutation_with_valid_crc_is_rejected(req: Request, data: list[int], draw: st.DataObject) -> None:
    """A frame that is intact on the wire but is not the answer to this request is never taken."""
    body = bytearray(good_reply(req, data)[:-2])
    header = 3 if req.function in (READ_HOLDING, READ_INPUT) else 6  # address, fc, count / echo
    i = draw.draw(st.integers(0, header - 1))
    new = draw.draw(st.integers(0, 255))
    assume(new != body[i])
    body[i] = new
    checked = check_reply(req, append_crc(bytes(body)))
    assert checked.verdict is not ReplyVerdict.OK, checked


@given(requests(), st.lists(words, max_size=8), st.integers(1, 4))
def test_truncated_or_extended_replies_rejected(req: Request, data: list[int], cut: int) -> None:
    reply = good_reply(req, data)
    assert check_reply(req, reply[:-cut]).verdict is not ReplyVerdict.OK
    assert check_reply(req, reply + b"\x00" * cut).verdict is not ReplyVerdict.OK
