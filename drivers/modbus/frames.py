"""RTU frame codec: build requests, cut replies out of a byte stream, check each reply against its request.

RTU has no transaction id. A reply is only trustworthy if it matches the request in every field
that the request determines: slave address, function code, byte count (reads), and the echoed
address/value or address/quantity (writes). `check_reply` classifies every frame so the master
can count what it drops instead of silently taking the wrong data (the pymodbus failure mode).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from drivers.modbus.crc import append_crc, crc_ok

READ_HOLDING = 0x03
READ_INPUT = 0x04
WRITE_SINGLE = 0x06
WRITE_MULTIPLE = 0x10

READ_FUNCTIONS = frozenset({READ_HOLDING, READ_INPUT})
WRITE_FUNCTIONS = frozenset({WRITE_SINGLE, WRITE_MULTIPLE})
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "slave device failure",
    0x05: "acknowledge (busy with a long operation)",
    0x06: "slave device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One Modbus request. `values` is empty for reads."""

    slave: int
    function: int
    address: int
    count: int
    values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.slave <= 247:
            raise ValueError(f"slave address {self.slave} outside 1..247")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"register address {self.address} outside 0..65535")
        if self.function in READ_FUNCTIONS:
            if not 1 <= self.count <= MAX_READ_COUNT or self.values:
                raise ValueError(f"read count {self.count} outside 1..{MAX_READ_COUNT}")
        elif self.function == WRITE_SINGLE:
            if self.count != 1 or len(self.values) != 1:
                raise ValueError("write single takes exactly one value")
        elif self.function == WRITE_MULTIPLE:
            if not 1 <= len(self.values) <= MAX_WRITE_COUNT or self.count != len(self.values):
                raise ValueError(f"write multiple takes 1..{MAX_WRITE_COUNT} values")
        else:
            raise ValueError(f"function code {self.function} not supported")
        if self.address + self.count > 0x10000:
            raise ValueError("register range runs past 65535")
        if any(not 0 <= v <= 0xFFFF for v in self.values):
            raise ValueError("register values must be 0..65535")

    @property
    def is_write(self) -> bool:
        return self.function in WRITE_FUNCTIONS

    def encode(self) -> bytes:
        if self.function in READ_FUNCTIONS:
            body = struct.pack(">BBHH", self.slave, self.function, self.address, self.count)
        elif self.function == WRITE_SINGLE:
            body = struct.pack(">BBHH", self.slave, self.function, self.address, self.values[0])
        else:
            n = len(self.values)
            body = struct.pack(f">BBHHB{n}H", self.slave, self.function, self.address, n, 2 * n, *self.values)
        return append_crc(body)

    @property
    def reply_length(self) -> int:
        """Length of the normal (non-exception) reply in bytes."""
        if self.function in READ_FUNCTIONS:
            return 5 + 2 * self.count
        return 8

    def signature(self) -> tuple[int, ...]:
        """What distinguishes this request's reply from another's on the same slave.

        Used to recognise a late reply to an earlier, timed-out request.
        """
        if self.function in READ_FUNCTIONS:
            return (self.function, 2 * self.count)
        if self.function == WRITE_SINGLE:
            return (self.function, self.address, self.values[0])
        return (self.function, self.address, self.count)


def read_request(slave: int, address: int, count: int, function: int = READ_HOLDING) -> Request:
    return Request(slave, function, address, count)


def write_request(slave: int, address: int, values: list[int] | tuple[int, ...]) -> Request:
    """FC06 for one register, FC16 for several."""
    vals = tuple(values)
    if len(vals) == 1:
        return Request(slave, WRITE_SINGLE, address, 1, vals)
    return Request(slave, WRITE_MULTIPLE, address, len(vals), vals)


def frame_length(buf: bytes | bytearray) -> int | None:
    """Expected total length of the reply frame at the start of `buf`.

    None: not enough bytes yet to tell. 0: the function code is not one a slave may answer
    with, so the first byte is garbage.
    """
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc in READ_FUNCTIONS:
        if len(buf) < 3:
            return None
        return 5 + buf[2]
    if fc in WRITE_FUNCTIONS:
        return 8
    return 0


class ReplyVerdict(enum.Enum):
    OK = "ok"
    EXCEPTION = "exception"
    CRC_ERROR = "crc_error"
    OTHER_SLAVE = "other_slave"  # a valid frame from an address we did not ask
    MISMATCH = "mismatch"  # right slave, but not the answer to this request


@dataclass(frozen=True, slots=True)
class Checked:
    verdict: ReplyVerdict
    registers: tuple[int, ...] = ()
    exception_code: int = 0
    slave: int = 0
    signature: tuple[int, ...] = ()


def reply_signature(frame: bytes) -> tuple[int, ...]:
    """The signature (see Request.signature) that a well-formed reply frame carries."""
    fc = frame[1]
    if fc in READ_FUNCTIONS:
        return (fc, frame[2])
    if fc == WRITE_SINGLE:
        return (fc, *struct.unpack_from(">HH", frame, 2))
    if fc == WRITE_MULTIPLE:
        return (fc, *struct.unpack_from(">HH", frame, 2))
    return (fc,)


def check_reply(request: Request, frame: bytes) -> Checked:
    """Classify `frame` (one whole frame, CRC included) as the reply to `request` or not."""
    if not crc_ok(frame):
        return Checked(ReplyVerdict.CRC_ERROR)
    slave, fc = frame[0], frame[1]
    if slave != request.slave:
        return Checked(ReplyVerdict.OTHER_SLAVE, slave=slave, signature=_safe_signature(frame))
    if fc == (request.function | 0x80) and len(frame) == 5:
        return Checked(ReplyVerdict.EXCEPTION, exception_code=frame[2], slave=slave)
    if fc != request.function or len(frame) != request.reply_length:
        return Checked(ReplyVerdict.MISMATCH, slave=slave, signature=_safe_signature(frame))
    if request.function in READ_FUNCTIONS:
        if frame[2] != 2 * request.count:
            return Checked(ReplyVerdict.MISMATCH, slave=slave, signature=_safe_signature(frame))
        regs = struct.unpack_from(f">{request.count}H", frame, 3)
        return Checked(ReplyVerdict.OK, registers=regs, slave=slave)
    if frame[:6] != request.encode()[:6]:
        # FC06 echoes address and value; FC16 echoes address and quantity.
        return Checked(ReplyVerdict.MISMATCH, slave=slave, signature=_safe_signature(frame))
    return Checked(ReplyVerdict.OK, registers=request.values, slave=slave)


def _safe_signature(frame: bytes) -> tuple[int, ...]:
    try:
        return reply_signature(frame)
    except struct.error:
        return (frame[1],)


def exception_name(code: int) -> str:
    return EXCEPTION_NAMES.get(code, f"exception 0x{code:02X}")
