"""Modbus RTU request parsing and reply building on the slave side.

Only what the OHT slave firmware does: a request is complete once the buffer holds the length its
function code implies (there is no length field in RTU, so a slave has to know), then the CRC
decides whether it is looked at at all. Replies are built here; the decision what to reply lives
in ``device.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.sim.crc import with_crc

FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_SINGLE = 0x06
FC_WRITE_MULTIPLE = 0x10

READ_FUNCTIONS = frozenset((FC_READ_HOLDING, FC_READ_INPUT))
WRITE_FUNCTIONS = frozenset((FC_WRITE_SINGLE, FC_WRITE_MULTIPLE))
KNOWN_FUNCTIONS = READ_FUNCTIONS | WRITE_FUNCTIONS

EXC_ILLEGAL_FUNCTION = 0x01
EXC_ILLEGAL_ADDRESS = 0x02
EXC_ILLEGAL_VALUE = 0x03

#: Modbus limits for one PDU (read 125 registers, write 123).
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123

MIN_FRAME = 4  # address, function, CRC (2)


def request_length(buf: bytes | bytearray) -> int | None:
    """Total length of the request at the start of ``buf``, or None while it cannot be known yet.

    03/04/06 and every unknown function code: 8 bytes (an unknown code is answered with exception
    01 after an 8-byte frame passes its CRC; a shorter one once line silence ends it, see
    ``Simulator._drop_partial``). 16: 9 + the byte count at offset 6.
    """
    if len(buf) < 2:
        return None
    if buf[1] == FC_WRITE_MULTIPLE:
        if len(buf) < 7:
            return None
        return 9 + buf[6]
    return 8


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded request PDU (CRC already checked and stripped)."""

    unit: int
    function: int
    address: int = 0
    count: int = 0
    values: tuple[int, ...] = ()
    #: Set when the PDU itself is malformed (byte count disagrees with quantity, ...):
    #: the Modbus answer is exception 03.
    malformed: bool = False


def parse_request(frame: bytes | bytearray) -> Request:
    """Decode a complete, CRC-checked frame. Unknown function codes decode to a bare Request."""
    unit, function = frame[0], frame[1]
    if function in READ_FUNCTIONS:
        address, count = struct.unpack_from(">HH", frame, 2)
        return Request(unit, function, address, count)
    if function == FC_WRITE_SINGLE:
        address, value = struct.unpack_from(">HH", frame, 2)
        return Request(unit, function, address, 1, (value,))
    if function == FC_WRITE_MULTIPLE:
        address, count = struct.unpack_from(">HH", frame, 2)
        byte_count = frame[6]
        data = bytes(frame[7 : 7 + byte_count])
        if byte_count != 2 * count or len(data) != byte_count or count == 0:
            return Request(unit, function, address, count, (), malformed=True)
        values = struct.unpack(f">{count}H", data)
        return Request(unit, function, address, count, values)
    return Request(unit, function)


def read_reply(unit: int, function: int, values: list[int] | tuple[int, ...]) -> bytes:
    body = struct.pack(f">BBB{len(values)}H", unit, function, 2 * len(values), *values)
    return with_crc(body)


def write_single_reply(unit: int, address: int, value: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, FC_WRITE_SINGLE, address, value))


def write_multiple_reply(unit: int, address: int, count: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, FC_WRITE_MULTIPLE, address, count))


def exception_reply(unit: int, function: int, code: int) -> bytes:
    return with_crc(bytes((unit, (function | 0x80) & 0xFF, code & 0xFF)))


def readdress(frame: bytes, unit: int) -> bytes:
    """The same reply as if sent by ``unit`` (CRC recomputed, so it is a valid frame)."""
    return with_crc(bytes((unit & 0xFF,)) + frame[1:-2])


def spoil_crc(frame: bytes) -> bytes:
    """The same reply with a CRC that cannot match (both CRC bytes inverted)."""
    return frame[:-2] + bytes((frame[-2] ^ 0xFF, frame[-1] ^ 0xFF))
