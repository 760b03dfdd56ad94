"""Modbus RTU CRC-16 (init 0xFFFF, reflected polynomial 0xA001, low byte first on the wire).

The old master shipped with CRC checking switched off; here every frame in both directions is
checked. A 256-entry table keeps the per-frame cost to one lookup per byte.
"""

from __future__ import annotations


def _build_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _build_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS of `data` as an integer (0..0xFFFF)."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def append_crc(body: bytes) -> bytes:
    """`body` followed by its CRC, low byte first, as RTU puts it on the wire."""
    crc = crc16(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def crc_ok(frame: bytes | bytearray | memoryview) -> bool:
    """True when the last two bytes of `frame` are the CRC of the bytes before them."""
    if len(frame) < 3:
        return False
    crc = crc16(frame[:-2])
    return frame[-2] == (crc & 0xFF) and frame[-1] == (crc >> 8)
