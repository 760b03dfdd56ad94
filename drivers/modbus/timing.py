"""Wire timing of RTU frames: character time, inter-frame silence and per-request deadlines.

A pty ignores the baud rate but a real RS485 line does not, so every wait is derived from the
configured line settings rather than from fixed constants: a deadline is the request's wire time
plus the slave's turnaround budget plus the reply's wire time plus a small host margin. That keeps
one dead slave from blocking the bus for seconds (the old master's worst case was ~13 s).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LineTiming:
    """Timing facts for one serial line configuration."""

    baudrate: int
    bits_per_char: int = 10  # start + 8 data + stop (8N1); 11 with parity or 2 stop bits
    interframe_chars: float = 3.5
    host_margin_s: float = 0.002  # OS/UART latency allowance added to every deadline

    @property
    def char_s(self) -> float:
        return self.bits_per_char / self.baudrate

    @property
    def silence_s(self) -> float:
        """t3.5: the silence that separates RTU frames."""
        return self.interframe_chars * self.char_s

    def wire_s(self, n_bytes: int) -> float:
        return n_bytes * self.char_s

    def deadline_s(self, request_bytes: int, reply_bytes: int, turnaround_s: float) -> float:
        """How long to wait, from the moment the request is handed to the port, for the whole reply."""
        return (
            self.wire_s(request_bytes) + turnaround_s + self.wire_s(reply_bytes) + self.silence_s + self.host_margin_s
        )

    def transaction_s(self, request_bytes: int, reply_bytes: int) -> float:
        """Theoretical minimum bus time of one transaction: both frames plus two t3.5 gaps."""
        return self.wire_s(request_bytes + reply_bytes) + 2 * self.silence_s


def line_timing(baudrate: int, parity: str = "N", stopbits: int = 1) -> LineTiming:
    bits = 1 + 8 + (0 if parity.upper() == "N" else 1) + stopbits
    return LineTiming(baudrate=baudrate, bits_per_char=bits)
