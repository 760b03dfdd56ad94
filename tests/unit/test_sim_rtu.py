"""CRC and RTU framing of the simulator, checked against independent known values."""

from __future__ import annotations

import struct

import pytest

from drivers.sim import rtu
from drivers.sim.crc import crc16, crc_ok, with_crc


@pytest.mark.parametrize(
    ("body", "wire_crc"),
    [
        # Textbook Modbus example: read 1 holding register at 0 from unit 1 -> CRC bytes 84 0A.
        (bytes.fromhex("010300000001"), bytes.fromhex("840a")),
        # Read 10 registers at 0x0000 from unit 2 (cross-checked with pymodbus' own framer output).
        (bytes.fromhex("02030000000a"), bytes.fromhex("c5fe")),
    ],
)
def test_crc_known_vectors(body: bytes, wire_crc: bytes) -> None:
    assert with_crc(body)[-2:] == wire_crc
    assert crc_ok(body + wire_crc)


def test_crc_check_value_of_the_standard_string() -> None:
    # CRC-16/MODBUS catalogue check value for "123456789".
    assert crc16(b"123456789") == 0x4B37


def test_crc_ok_rejects_any_single_bit_flip() -> None:
    frame = with_crc(bytes.fromhex("0503000000040000"))
    for i in range(len(frame)):
        for bit in range(8):
            spoiled = bytearray(frame)
            spoiled[i] ^= 1 << bit
            assert not crc_ok(spoiled)
    assert not crc_ok(b"\x01\x02")


def test_request_length_by_function_code() -> None:
    assert rtu.request_length(b"\x05") is None
    assert rtu.request_length(b"\x05\x03") == 8
    assert rtu.request_length(b"\x05\x06") == 8
    assert rtu.request_length(b"\x05\x2b") == 8  # unknown: 8 bytes, then exception 01
    assert rtu.request_length(b"\x05\x10\x00\x00\x00\x02") is None  # byte count not seen yet
    assert rtu.request_length(b"\x05\x10\x00\x00\x00\x02\x04") == 13


def test_parse_write_multiple_and_malformed_byte_count() -> None:
    frame = with_crc(struct.pack(">BBHHBHH", 3, 0x10, 0x0101, 2, 4, 5, 0))
    req = rtu.parse_request(frame)
    assert (req.unit, req.function, req.address, req.count, req.values) == (3, 0x10, 0x0101, 2, (5, 0))
    assert not req.malformed
    bad = with_crc(struct.pack(">BBHHBHH", 3, 0x10, 0x0101, 3, 4, 5, 0))  # count 3, 4 bytes
    assert rtu.parse_request(bad).malformed


def test_reply_builders() -> None:
    assert rtu.read_reply(2, 3, [0x00F0, 0x0320]) == with_crc(bytes.fromhex("02030400f00320"))
    assert rtu.exception_reply(3, 6, 2) == with_crc(bytes.fromhex("038602"))
    assert rtu.write_single_reply(3, 1, 1) == with_crc(bytes.fromhex("030600010001"))
    assert rtu.write_multiple_reply(3, 0x101, 3) == with_crc(bytes.fromhex("031001010003"))
    moved = rtu.readdress(rtu.read_reply(3, 3, [1]), 7)
    assert moved[0] == 7 and crc_ok(moved)
    assert not crc_ok(rtu.spoil_crc(moved))
