"""The simulator process: a pty, a control socket and one single-threaded ``selectors`` loop.

No asyncio and no threads on the data path: a frame is read, executed and answered in the same
loop iteration, so an immediate reply costs tens of microseconds and a bench measures the master.
Everything that happens later (service ticks, delayed replies, wire time, firmware physics) is a
deadline on one timer heap. ``selectors.SelectSelector`` is used on purpose: select() takes a
microsecond timeout, epoll/poll only milliseconds, and wire emulation needs ~0.2 ms accuracy.

All times are ``time.monotonic()``: on Linux that clock is system-wide (CLOCK_MONOTONIC), so
another process on the same machine can compare the sim's timestamps with its own clock.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import random
import selectors
import signal
import sys
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.sim import rtu
from drivers.sim.commands import Commands
from drivers.sim.control import ControlServer
from drivers.sim.crc import crc_ok
from drivers.sim.device import Queued, SimSlave
from drivers.sim.firmware import TICK_S, Firmware
from drivers.sim.registers import Profile

log = logging.getLogger("sim")

#: Partial frames are dropped after this much line silence when wire emulation is off. Below the
#: 1.75 ms t3.5 a master uses at 115200 baud, so garbage never swallows the next request.
IDLE_GAP_S = 0.0015
#: Bits per character on the wire (8N1).
BITS_PER_CHAR = 10
#: Keep this many write records for the `writes` query.
WRITE_LOG_SIZE = 100_000
READ_LOG_SIZE = 50_000  # reads are many more: the recent ones are what tests ask about

_ROLE_ORDER = {"travel": 0, "safety": 1, "power": 2, "dock": 3}


@dataclass(slots=True)
class _Timer:
    callback: Callable[[], None]
    cancelled: bool = False


class Simulator:
    def __init__(
        self,
        link: str,
        control_path: str,
        slaves: list[tuple[int, Profile]],
        *,
        wire_baud: int = 0,
        service_periods: dict[int, float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.link = os.path.abspath(link)
        self.control_path = os.path.abspath(control_path)
        self.rng = random.Random(seed)
        self.wire_baud = wire_baud
        self.selector = selectors.SelectSelector()
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self.started = time.monotonic()
        service_periods = service_periods or {}
        self.slaves: dict[int, SimSlave] = {}
        for unit, profile in slaves:
            period = service_periods.get(unit, profile.service_period_ms)
            phase = self.started + self.rng.uniform(0.0, period / 1000.0) if period > 0 else self.started
            fault_rng = random.Random(self.rng.getrandbits(64))
            self.slaves[unit] = SimSlave(unit, profile, self, fault_rng, period, phase)
        self._tick_order = sorted(self.slaves.values(), key=lambda s: _ROLE_ORDER.get(s.profile.role, 9))
        self.writes: deque[dict[str, Any]] = deque(maxlen=WRITE_LOG_SIZE)
        #: Every read request a slave received: (time received, unit, function, address, count).
        self.reads: deque[tuple[float, int, int, int, int]] = deque(maxlen=READ_LOG_SIZE)
        self.bus = {
            "frames_unserved": 0,
            "crc_errors_unattributed": 0,
            "partials_dropped": 0,
            "replies_lost": 0,
            "bytes_in": 0,
            "bytes_out": 0,
        }
        self.master_fd: int | None = None
        #: Bumped on every line-up, so a reply scheduled before a line flap is never sent after it.
        self.line_generation = 0
        self.slave_fd: int | None = None
        self.pty_name = ""
        self.rx = bytearray()
        self.rx_last = 0.0
        self.running = False
        self.control = ControlServer(self.control_path, self.selector, Commands(self).handle)
        self._last_physics = self.started
        self._wake_r = self._wake_w = -1

    # --- peers, timers ---
    def firmware_for_role(self, role: str) -> Firmware | None:
        for slave in self._tick_order:
            if slave.profile.role == role:
                return slave.firmware
        return None

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def char_time(self) -> float:
        return BITS_PER_CHAR / self.wire_baud if self.wire_baud > 0 else 0.0

    def idle_gap(self) -> float:
        return max(IDLE_GAP_S, 3.5 * self.char_time())

    # --- the line (pty + symlink) ---
    @property
    def line_up(self) -> bool:
        return self.master_fd is not None

    def open_line(self) -> None:
        if self.line_up:
            return
        if os.path.lexists(self.link) and not os.path.islink(self.link):
            raise OSError(errno.EEXIST, f"link path exists and is not a symlink: {self.link}")
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # raw: no echo, no CR/LF translation, 8-bit clean, no signals
            os.set_blocking(master, False)
            pty_name = os.ttyname(slave)
            tmp = f"{self.link}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(pty_name, tmp)
            os.replace(tmp, self.link)  # atomically replaces a stale symlink
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self.master_fd, self.slave_fd, self.pty_name = master, slave, pty_name
        self.line_generation += 1
        self.selector.register(master, selectors.EVENT_READ, self._on_pty)
        self.rx.clear()

    def close_line(self) -> None:
        if not self.line_up:
            return
        assert self.master_fd is not None and self.slave_fd is not None
        self.selector.unregister(self.master_fd)
        try:
            if os.path.islink(self.link) and os.readlink(self.link) == self.pty_name:
                os.unlink(self.link)
        except OSError:
            pass
        os.close(self.master_fd)
        os.close(self.slave_fd)
        self.master_fd = self.slave_fd = None
        self.rx.clear()
        for slave in self.slaves.values():
            slave.queue.clear()  # frames in flight die with the line

    # --- receive path ---
    def _on_pty(self, mask: int) -> None:
        assert self.master_fd is not None
        try:
            data = os.read(self.master_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no reader on the other side; cannot happen while we hold it
                return
            raise
        if not data:
            return
        now = time.monotonic()
        self.bus["bytes_in"] += len(data)
        if self.rx and now - self.rx_last > self.idle_gap():
            self._drop_partial()
        self.rx += data
        self.rx_last = now
        self._parse(now)

    def _drop_partial(self) -> None:
        """Line silence ended a partial frame. A complete frame with an unknown function code is
        shorter than the 8 bytes we waited for: the silence delimits it, so it still gets its
        exception 01 (the firmware frames by silence too). Anything else is garbage."""
        rx = self.rx
        if len(rx) >= rtu.MIN_FRAME and rx[1] not in rtu.KNOWN_FUNCTIONS and crc_ok(rx):
            slave = self.slaves.get(rx[0])
            if slave is not None:
                frame = bytes(rx)
                rx.clear()
                self._accept(slave, rtu.parse_request(frame), len(frame), self.rx_last)
                return
        self.bus["partials_dropped"] += 1
        rx.clear()

    def _parse(self, now: float) -> None:
        rx = self.rx
        while True:
            length = rtu.request_length(rx)
            if length is None or len(rx) < length:
                return
            frame = bytes(rx[:length])
            if not crc_ok(frame):
                # Firmware behaviour: silently ignored, and the rest of the buffer with it.
                slave = self.slaves.get(frame[0])
                if slave is not None:
                    slave.stats.crc_errors += 1
                else:
                    self.bus["crc_errors_unattributed"] += 1
                rx.clear()
                return
            del rx[:length]
            slave = self.slaves.get(frame[0])
            if slave is None:  # another slave's frame, or broadcast (not supported): ignore
                self.bus["frames_unserved"] += 1
                continue
            self._accept(slave, rtu.parse_request(frame), length, now)

    def _accept(self, slave: SimSlave, req: rtu.Request, length: int, now: float) -> None:
        slave.stats.frames_received += 1
        faults = slave.faults
        if slave.booting(now) or (faults.silent and not faults.silent_execute):
            slave.stats.frames_ignored += 1
            if faults.silent:
                slave.stats.faults_injected += 1
            self._log_write(slave, req, now, None, applied=False, exception=None)
            return
        slave.queue.append(Queued(now, req, length))
        self._kick(slave, now)

    # --- scheduling ---
    def _kick(self, slave: SimSlave, now: float) -> None:
        if slave.busy or slave.tick_scheduled or not slave.queue:
            return
        if slave.service_period <= 0:
            self._process(slave, now)
            return
        when = slave.next_tick(now)
        slave.tick_scheduled = True
        self.call_at(when, lambda: self._service_tick(slave, when))

    def _service_tick(self, slave: SimSlave, when: float) -> None:
        slave.tick_scheduled = False
        slave.last_tick = when
        if slave.queue and not slave.busy:
            self._process(slave, time.monotonic())

    def _process(self, slave: SimSlave, now: float) -> None:
        received, req, length = slave.queue.popleft()
        faults, stats = slave.faults, slave.stats
        if slave.booting(now) or (faults.silent and not faults.silent_execute):
            stats.frames_ignored += 1
            self._log_write(slave, req, received, None, applied=False, exception=None)
            self._kick(slave, now)
            return
        exception: int | None
        if faults.exception_code and faults.roll(faults.exception_rate):
            stats.faults_injected += 1
            reply = rtu.exception_reply(req.unit, req.function, faults.exception_code)
            applied, exception = False, faults.exception_code
        else:
            outcome = slave.execute(req, now)
            reply, applied, exception = outcome.reply, outcome.applied, outcome.exception
        self._log_write(slave, req, received, now, applied=applied, exception=exception)
        if faults.silent:  # silent but executing: a dead TX line
            stats.faults_injected += 1
            self._kick(slave, now)
            return
        if faults.reply_as and faults.roll(faults.wrong_address_rate):
            stats.faults_injected += 1
            reply = rtu.readdress(reply, faults.reply_as)
        if faults.roll(faults.corrupt_rate):
            stats.faults_injected += 1
            reply = rtu.spoil_crc(reply)
        send_at = now
        char = self.char_time()
        if char:
            send_at = max(received + length * char, now) + (3.5 + len(reply)) * char
        if faults.delay_ms > 0 and faults.roll(faults.delay_rate):
            stats.faults_injected += 1
            stats.replies_delayed += 1
            send_at += faults.delay_ms / 1000.0
        if send_at <= now:
            self._send(slave, reply)
            return
        slave.busy = True
        generation = self.line_generation
        slave.pending = self.call_at(send_at, lambda: self._send_later(slave, reply, generation))

    def _send_later(self, slave: SimSlave, reply: bytes, generation: int) -> None:
        slave.busy = False
        slave.pending = None
        if self.line_up and self.line_generation == generation:
            self._send(slave, reply)
        else:
            self.bus["replies_lost"] += 1
            self._kick(slave, time.monotonic())

    def _send(self, slave: SimSlave, reply: bytes) -> None:
        if self.master_fd is None:
            self.bus["replies_lost"] += 1
        else:
            try:
                written = os.write(self.master_fd, reply)
            except (BlockingIOError, InterruptedError, OSError):
                written = 0
            if written < len(reply):
                self.bus["replies_lost"] += 1  # pty buffer full: nobody is reading the port
            self.bus["bytes_out"] += written
            slave.stats.replies_sent += 1
            if reply[1] & 0x80:
                slave.stats.exceptions_sent += 1
        self._kick(slave, time.monotonic())

    def _log_write(
        self,
        slave: SimSlave,
        req: rtu.Request,
        received: float,
        applied_at: float | None,
        *,
        applied: bool,
        exception: int | None,
    ) -> None:
        if req.function not in rtu.WRITE_FUNCTIONS:
            self.reads.append((received, slave.unit, req.function, req.address, req.count))
            return
        self.writes.append(
            {
                "t": received,
                "t_applied": applied_at,
                "addr": slave.unit,
                "fc": req.function,
                "address": req.address,
                "values": list(req.values),
                "applied": applied,
                "exception": exception,
            }
        )

    # --- firmware physics ---
    def _physics(self, when: float) -> None:
        now = time.monotonic()
        dt = now - self._last_physics
        self._last_physics = now
        for slave in self._tick_order:
            if not slave.booting(now):
                slave.firmware.tick(now, dt)
        nxt = when + TICK_S
        while nxt <= now:
            nxt += TICK_S
        self.call_at(nxt, lambda: self._physics(nxt))

    # --- main loop ---
    def _on_wake(self, mask: int) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _on_signal(self, signum: int, frame: object) -> None:
        self.running = False

    def start(self) -> None:
        """Open the line and the control socket; then the caller prints READY and calls run()."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.open_line()
        self.control.start()
        self.running = True
        first = time.monotonic() + TICK_S
        self._last_physics = time.monotonic()
        self.call_at(first, lambda: self._physics(first))

    def run(self) -> None:
        timers = self._timers
        while self.running:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, _, timer = heapq.heappop(timers)
                if not timer.cancelled:
                    timer.callback()
                now = time.monotonic()
            if self.rx and now - self.rx_last > self.idle_gap():
                self._drop_partial()
            timeout = timers[0][0] - now if timers else 1.0
            if self.rx:
                timeout = min(timeout, self.rx_last + self.idle_gap() - now)
            for key, mask in self.selector.select(max(timeout, 0.0)):
                key.data(mask)
                if self._stopped():  # a handler may have asked to stop
                    break

    def _stopped(self) -> bool:
        return not self.running

    def stop(self) -> None:
        """Remove the symlink and the socket; close everything."""
        self.running = False
        self.close_line()
        self.control.close()
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.selector.close()


def print_ready(sim: Simulator) -> None:
    sys.stdout.write(f"SIM READY link={sim.link} control={sim.control_path} pid={os.getpid()}\n")
    sys.stdout.flush()
