"""The serial port, read without threads: the event loop is told when bytes arrive.

pyserial opens and configures the device (termios, exclusive flock); after that the file
descriptor is used directly with `loop.add_reader`, so waiting for a reply costs no thread hop
and a vanished device (EIO/EOF) is noticed at once.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable

import serial

from drivers.modbus.errors import PortUnavailable

_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialPort:
    """Non-blocking access to one serial device, owned by exactly one bus task."""

    def __init__(
        self,
        path: str,
        *,
        baudrate: int,
        parity: str = "N",
        stopbits: int = 1,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.buffer = bytearray()
        self.last_rx = 0.0
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None  # set while a send waits for output room
        self._on_lost = on_lost
        self.lost_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Open and configure the device; raise PortUnavailable with the OS reason when it fails."""
        try:
            ser = serial.Serial(
                self.path,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=_PARITIES[self.parity],
                stopbits=serial.STOPBITS_TWO if self.stopbits == 2 else serial.STOPBITS_ONE,
                timeout=0,
                write_timeout=0,
                xonxoff=False,
                rtscts=False,
                dsrdtr=False,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._serial = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self.buffer.clear()
        self.lost_reason = None
        try:
            ser.reset_input_buffer()
        except (serial.SerialException, OSError):
            pass

    def close(self) -> None:
        fd, ser = self._fd, self._serial
        self._fd = None
        self._serial = None
        if fd is not None and self._loop is not None:
            try:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            except (ValueError, OSError):
                pass
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)  # a send waiting for room (wait_writable) learns the port is gone
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError):
                pass
        self._wake()

    def _lost(self, reason: str) -> None:
        if self._fd is None:
            return
        self.lost_reason = reason
        self.close()
        if self._on_lost is not None:
            self._on_lost(reason)

    def _on_readable(self) -> None:
        if self.read_now() == 0 and self._hung_up():
            self._lost("device hung up")

    def _hung_up(self) -> bool:
        """A tty in raw mode (VMIN=0) reads b'' both when idle and when gone: ask poll() which."""
        fd = self._fd
        if fd is None:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))

    def read_now(self) -> int:
        """Move whatever the kernel holds into `buffer`; returns the number of bytes read."""
        fd = self._fd
        if fd is None:
            return 0
        total = 0
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            except OSError as exc:
                self._lost(f"read failed: {exc.strerror or exc}")
                break
            if not chunk:
                break  # nothing buffered (raw tty, VMIN=0); a hang-up is told apart in _on_readable
            self.buffer += chunk
            total += len(chunk)
            if len(chunk) < 4096:
                break
        if total:
            self.last_rx = time.monotonic()
            self._wake()
        return total

    def wake(self) -> None:
        """Make a pending `wait_data` return early (the caller re-checks why)."""
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write_some(self, data: bytes | memoryview) -> int:
        """Hand the kernel as much of `data` as it takes now, never waiting; 0 when its buffer is full.

        A frame normally goes in one call. The buffer is full only when the line is stuck (a
        stalled USB adapter, flow control), and then the caller waits for room with
        `wait_writable` on the event loop instead of spinning in here.
        """
        fd = self._fd
        if fd is None:
            raise PortUnavailable(f"{self.path} is not open ({self.lost_reason or 'closed'})")
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._lost(f"write failed: {exc.strerror or exc}")
            raise PortUnavailable(f"{self.path}: write failed: {exc}") from exc

    async def wait_writable(self, deadline: float) -> None:
        """Return when the kernel can take more output; PortUnavailable once `deadline` passes."""
        fd = self._fd
        if fd is None:
            raise PortUnavailable(f"{self.path} is not open ({self.lost_reason or 'closed'})")
        loop = self._loop or asyncio.get_running_loop()
        room: asyncio.Future[None] = loop.create_future()
        self._room = room
        loop.add_writer(fd, _settle, room)
        try:
            await asyncio.wait_for(room, max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise PortUnavailable(
                f"{self.path}: output stalled (the kernel took no bytes for a frame in time)"
            ) from None
        finally:
            self._room = None
            if self._fd == fd:
                loop.remove_writer(fd)
        if self._fd is None:
            raise PortUnavailable(f"{self.path} lost: {self.lost_reason or 'closed'}")

    async def wait_data(self, deadline: float) -> None:
        """Return when bytes arrive, the port is lost, or `deadline` (time.monotonic) passes."""
        if self._fd is None:
            raise PortUnavailable(f"{self.path} is not open ({self.lost_reason or 'closed'})")
        loop = self._loop or asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        delay = deadline - time.monotonic()
        handle = loop.call_later(max(delay, 0.0), self._wake)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None
        if self._fd is None:
            raise PortUnavailable(f"{self.path} lost: {self.lost_reason or 'closed'}")


async def pause_until(deadline: float) -> None:
    """Sleep until `deadline` (time.monotonic) with sub-millisecond accuracy.

    The event loop's timers have millisecond granularity, so the last stretch (at most ~1.5 ms,
    e.g. a 0.3 ms t3.5 gap at 115200 baud) is spun instead of slept.
    """
    remaining = deadline - time.monotonic()
    if remaining > 0.0015:
        await asyncio.sleep(remaining - 0.0012)
    while time.monotonic() < deadline:
        pass


def _settle(room: asyncio.Future[None]) -> None:
    """Mark the output as writable again; the writer callback may fire after the wait ended."""
    if not room.done():
        room.set_result(None)
