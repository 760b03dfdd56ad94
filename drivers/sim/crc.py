"""Modbus RTU CRC-16, written here so the simulator shares no code with the bus master.

The simulator is a test peer: if it borrowed the master's CRC routine, a bug there would be
invisible in every test. Polynomial 0xA001 (0x8005 reflected), initial value 0xFFFF, and the
result goes on the wire low byte first.
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
    """CRC-16/MODBUS of ``data`` as an integer (0..0xFFFF)."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes | bytearray) -> bytes:
    """``body`` followed by its CRC, low byte first (the wire order)."""
    crc = crc16(body)
    return bytes(body) + bytes((crc & 0xFF, crc >> 8))


def crc_ok(frame: bytes | bytearray | memoryview) -> bool:
    """True when the last two bytes of ``frame`` are the CRC of the rest."""
    if len(frame) < 4:
        return False
    crc = crc16(frame[:-2])
    return frame[-2] == (crc & 0xFF) and frame[-1] == (crc >> 8)
