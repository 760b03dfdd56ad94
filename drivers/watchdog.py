"""Watchdogs outside the process: systemd's (sd_notify) and the Linux hardware watchdog.

Both are fed only by the control loop and only while it is healthy, so a stalled or confused
agent stops feeding them and is restarted (systemd) or the board is reset (/dev/watchdog).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

log = logging.getLogger("oht.watchdog")

WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = 0x80045707  # _IOR('W', 7, int)


class SdNotifier:
    """sd_notify over $NOTIFY_SOCKET (a leading '@' is the abstract namespace). No-op without it.

    It is called from the control loop, so it must never block: the datagram is sent with
    MSG_DONTWAIT on a non-blocking socket. When the receiver has not read its queue (a busy PID 1;
    the kernel holds only `net.unix.max_dgram_qlen` datagrams, 10 by default) the message is
    dropped and counted, never retried: a late WATCHDOG=1 is worth nothing, and the next tick
    sends a fresh one. Failures are logged at most once per `log_every_s`, with the count.
    """

    def __init__(
        self, socket_path: str | None = None, *, log_every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.path = path
        self._sock: socket.socket | None = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2  # ping at half the period
        self.sent = 0
        self.dropped = 0  # messages not delivered: receiver's queue full, or a socket error
        self.missed_pings = 0  # WATCHDOG=1 among them
        self._log_every_s = log_every_s
        self._clock = clock
        self._last_warning: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        return self._sock

    def notify(self, message: str) -> bool:
        """Send one notification now or not at all; True when the kernel took it."""
        if not self.path:
            return False
        address = "\0" + self.path[1:] if self.path.startswith("@") else self.path
        try:
            self._socket().sendto(message.encode(), socket.MSG_DONTWAIT, address)
        except BlockingIOError:
            self._dropped(message, "the receiver's queue is full: systemd is not reading it")
            return False
        except OSError as exc:
            self._dropped(message, str(exc))
            return False
        self.sent += 1
        return True

    def _dropped(self, message: str, why: str) -> None:
        self.dropped += 1
        if message.startswith("WATCHDOG=1"):
            self.missed_pings += 1
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= self._log_every_s:
            self._last_warning = now
            log.warning(
                "sd_notify: %s not sent (%s); %d message(s) dropped so far, %d of them watchdog pings",
                message.split("\n", 1)[0],
                why,
                self.dropped,
                self.missed_pings,
            )

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class HardwareWatchdog:
    """/dev/watchdog: set the timeout, keep it alive, and disarm it with the magic close on a clean stop."""

    def __init__(self, device: str, timeout_s: int) -> None:
        self.device = device
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", self.timeout_s))
        except OSError as exc:  # some drivers (and test devices) have a fixed timeout
            log.warning("%s: cannot set timeout (%s); using the driver's", self.device, exc)
        log.info("hardware watchdog %s armed (%d s)", self.device, self.timeout_s)

    def keepalive(self) -> None:
        if self._fd is not None:
            os.write(self._fd, b"\0")

    def close(self, *, disarm: bool) -> None:
        """disarm=True writes the magic 'V' first so the board is not reset after a clean stop."""
        if self._fd is None:
            return
        try:
            if disarm:
                os.write(self._fd, b"V")
        finally:
            os.close(self._fd)
            self._fd = None
