"""The RTU bus master: one task owns the port and decides, transaction by transaction, what goes next.

Order of service: stop writes, then due safety polls, then command writes, then due telemetry
polls, then probes of set-aside slaves. The queue is re-read between every transaction and every
retry, so a stop waits at most for the one transaction already on the wire. Traffic that would
still be on the wire when a phase-locked safety poll falls due is held back briefly, so that poll
keeps hitting the slave's service tick.

Every reply is checked against its request. A reply that arrives after its request timed out is
remembered as a "ghost" signature; before a request whose reply would look identical is sent to
the same slave, a short fence read with a different shape flushes the slave's queue. Slaves answer
in order, so once the fence's reply is in, no earlier reply can be mistaken for a later one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.modbus.crc import crc_ok
from drivers.modbus.errors import (
    BusCrcError,
    BusError,
    BusPreempted,
    BusQueueFull,
    BusStopped,
    BusTimeout,
    ModbusExceptionReply,
    PortUnavailable,
    SlaveSetAside,
)
from drivers.modbus.frames import (
    READ_HOLDING,
    ReplyVerdict,
    Request,
    check_reply,
    frame_length,
    read_request,
    reply_signature,
    write_request,
)
from drivers.modbus.interlock import OutputInterlock, Permit, PermitRevoked
from drivers.modbus.port import SerialPort, pause_until
from drivers.modbus.probes import ProbeCandidate, pick_probe
from drivers.modbus.schedule import STOPS, PollPlan, PollSchedule, Priority
from drivers.modbus.stats import BusStats, SlaveStats
from drivers.modbus.timing import LineTiming, line_timing

log = logging.getLogger("oht.bus")

SEND_STALL_S = 0.05  # a frame the kernel takes no byte of for this long: the port counts as stalled
FENCE_ADDRESS = 0x0100  # identity block: every profile maps it, so a fence read never raises 02
MAX_GHOSTS = 32
EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class SlaveLink:
    """What the master knows about one slave address: timing budget, health, pending ghosts."""

    address: int
    turnaround_s: float
    service_period_s: float = 0.0
    online: bool = True
    consecutive_failures: int = 0
    backoff_s: float = 0.0
    next_probe_at: float = 0.0
    ghosts: set[tuple[int, ...]] = field(default_factory=set)
    stats: SlaveStats = field(default_factory=SlaveStats)
    rtt_ema: float | None = None
    managed: bool = False  # configured for a bound module: may be set aside and probed
    reply_sent_at: float | None = None  # when the slave sent its last reply (read time less wire time)

    def note_rtt(self, seconds: float) -> None:
        self.stats.record_rtt(seconds)
        self.rtt_ema = seconds if self.rtt_ema is None else 0.8 * self.rtt_ema + 0.2 * seconds


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    request: Request = field(compare=False)
    future: asyncio.Future[tuple[int, ...]] = field(compare=False)
    retries: int = field(compare=False)
    queued_at: float = field(compare=False)
    permit: Permit | None = field(compare=False, default=None)


class BusMaster:
    """Owns one serial line. Use `execute`/`read`/`write` from any task; add polls to `schedule`."""

    def __init__(
        self,
        path: str,
        *,
        baudrate: int = 115200,
        parity: str = "N",
        stopbits: int = 1,
        read_retries: int = 1,
        write_retries: int = 2,
        fail_threshold: int = 3,
        # A set-aside slave is probed at most this far apart: the cap bounds how long polling
        # takes to come back once the line returns (under 2 s with the probe and first poll).
        probe_backoff_s: tuple[float, float] = (0.2, 1.0),
        reconnect_backoff_s: tuple[float, float] = (0.05, 1.0),
        queue_limit: int = 256,
        default_turnaround_s: float = 0.1,
        hold_back_limit_s: float = 0.2,
        on_event: EventCallback | None = None,
    ) -> None:
        self.timing: LineTiming = line_timing(baudrate, parity, stopbits)
        self.port = SerialPort(path, baudrate=baudrate, parity=parity, stopbits=stopbits, on_lost=self._on_port_lost)
        self.schedule = PollSchedule(start=time.monotonic())
        self.stats = BusStats()
        self.interlock = OutputInterlock()
        self.read_retries = read_retries
        self.write_retries = write_retries
        self.fail_threshold = fail_threshold
        self.probe_backoff_s = probe_backoff_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self.queue_limit = queue_limit
        self.default_turnaround_s = default_turnaround_s
        self.hold_back_limit_s = hold_back_limit_s
        self._on_event = on_event
        self._links: dict[int, SlaveLink] = {}
        self._queue: list[_Job] = []
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wakeup: asyncio.Future[None] | None = None
        self.on_wire: Request | None = None
        self._reached_slave_at = 0.0  # when the request on the wire had fully reached its slave

    # ----------------------------------------------------------------- configuration
    def configure_slave(self, address: int, *, turnaround_s: float, service_period_s: float = 0.0) -> SlaveLink:
        link = self.link(address)
        link.managed = True
        link.turnaround_s = max(turnaround_s, service_period_s)
        link.service_period_s = service_period_s
        if service_period_s > 0 and link.reply_sent_at is not None:
            # Its identity was read moments ago, on a tick: the polls about to be added start aligned.
            self.schedule.observe_tick(address, link.reply_sent_at, service_period_s, time.monotonic())
        return link

    def link(self, address: int) -> SlaveLink:
        link = self._links.get(address)
        if link is None:
            link = SlaveLink(address=address, turnaround_s=self.default_turnaround_s)
            self._links[address] = link
        return link

    @property
    def links(self) -> dict[int, SlaveLink]:
        return dict(self._links)

    @property
    def port_up(self) -> bool:
        return self.port.is_open

    def is_online(self, address: int) -> bool:
        link = self._links.get(address)
        return link is None or link.online

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the bus task; the port is opened (and reopened) by the task itself."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="bus-master")

    async def close(self, timeout: float = 2.0) -> None:
        """Finish the transaction on the wire, fail what is queued, close the port."""
        self._closing = True
        self._wake()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._fail_queue(BusStopped("bus master stopped"))
        self.port.close()

    # ----------------------------------------------------------------- public requests
    async def execute(
        self,
        request: Request,
        priority: Priority = Priority.COMMAND,
        *,
        retries: int | None = None,
        permit: Permit | None = None,
    ) -> tuple[int, ...]:
        """Queue `request`, wait for its checked reply (registers read, or values written).

        A write that may energise an output carries a `permit`: it goes to the wire only if no stop
        was requested since the permit was issued, checked as the frame is written (PermitRevoked).
        """
        return await self.submit(request, priority, retries=retries, permit=permit)

    def submit(
        self,
        request: Request,
        priority: Priority = Priority.COMMAND,
        *,
        retries: int | None = None,
        permit: Permit | None = None,
    ) -> asyncio.Future[tuple[int, ...]]:
        """Queue `request` now, without yielding to the loop; the future gets what `execute` returns.

        For a stop raised inside a bus callback (a reply that shows a trip): queued before the bus
        task picks its next job, the stop's first frame is that job, not the one after it.
        Raises at once what `execute` would raise before queueing.
        """
        if self._closing or self._task is None:
            raise BusStopped("bus master is not running")
        if not self.port.is_open:
            raise PortUnavailable(f"{self.port.path} is not open ({self.port.lost_reason or 'connecting'})")
        link = self.link(request.slave)
        if not link.online and priority not in STOPS:
            raise SlaveSetAside(f"slave {request.slave} is set aside after repeated failures")
        if len(self._queue) >= self.queue_limit and priority not in STOPS:
            self.stats.queue_rejected += 1
            raise BusQueueFull(f"bus queue holds {len(self._queue)} requests")
        if retries is None:
            retries = self.write_retries if request.is_write else self.read_retries
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._queue, _Job(int(priority), next(self._seq), request, fut, retries, time.monotonic(), permit)
        )
        self._wake()
        if priority == Priority.STOP:
            self.port.wake()  # an overdue read on the wire may be pre-empted (see _transact)
        return fut

    async def read(
        self,
        slave: int,
        address: int,
        count: int,
        *,
        priority: Priority = Priority.COMMAND,
        function: int = READ_HOLDING,
    ) -> tuple[int, ...]:
        return await self.execute(read_request(slave, address, count, function), priority)

    async def write(
        self, slave: int, address: int, values: list[int] | tuple[int, ...], *, priority: Priority = Priority.COMMAND
    ) -> None:
        await self.execute(write_request(slave, address, values), priority)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The bus task while the master runs (None before start and after close): for supervision."""
        return self._task

    def link_summary(self, address: int) -> dict[str, Any]:
        """Round trips, timeouts, CRC errors and success rate of one slave ({} if never addressed)."""
        link = self._links.get(address)
        return {} if link is None else link.stats.summary()

    def bus_summary(self) -> dict[str, Any]:
        """Port and line counters, without the per-slave detail of `stats_dict`."""
        return {
            "port": self.port.path,
            "port_up": self.port.is_open,
            "queue_depth": len(self._queue),
            **self.stats.as_dict(),
            "poll_overruns": self.schedule.overruns,
        }

    def stats_dict(self) -> dict[str, Any]:
        return {
            "port": self.port.path,
            "port_up": self.port.is_open,
            "queue_depth": len(self._queue),
            "bus": {**self.stats.as_dict(), "poll_overruns": self.schedule.overruns},
            "slaves": {
                addr: {"online": link.online, **link.stats.as_dict()} for addr, link in sorted(self._links.items())
            },
        }

    # ----------------------------------------------------------------- the bus task
    async def _run(self) -> None:
        while not self._closing:
            try:
                if not self.port.is_open:
                    await self._connect()
                    continue
                wake_at = await self._serve_one()
                if wake_at is not None:
                    await self._idle(wake_at)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus task must never die: log, breathe, carry on
                log.exception("bus task error (continuing)")
                await asyncio.sleep(0.01)

    def _eligible(self, plan: PollPlan) -> bool:
        return self.is_online(plan.slave)

    async def _serve_one(self) -> float | None:
        """Run the most urgent piece of work that may start now.

        Returns None when something ran, otherwise the time at which something may become runnable.
        """
        now = time.monotonic()
        head = self._queue[0] if self._queue else None
        if head is not None and head.future.done():
            heapq.heappop(self._queue)
            return None
        plan = self.schedule.due(now, self._eligible)
        if plan is not None and self.schedule.move_off_served_tick(plan, now):
            return None  # its tick went to other traffic: it waits for the next free one
        # A due phase-locked poll goes before every job but an urgent stop: missing its slot
        # costs a whole service period (100 ms on the safety module), the job waits a few ms.
        locked_due = plan is not None and plan.phase_locked and (head is None or head.priority != Priority.STOP)
        if head is not None and not locked_due and (plan is None or head.priority <= plan.priority):
            if head.priority != Priority.STOP:
                locked = self._hold_back_until(head.request, now, head.queued_at, None)
                if locked is not None:
                    return min(locked, head.queued_at + self.hold_back_limit_s)
            heapq.heappop(self._queue)
            await self._run_job(head)
            if head.priority in STOPS:
                # A stop is a sequence of frames (writes, read-backs) and its next frame is queued
                # only when its task runs again: let it, before a poll takes the bus in between.
                await asyncio.sleep(0)
            return None
        # A due probe of a set-aside slave goes before routine polls: on a busy bus the idle gap
        # it used to wait for never comes, and the module would stay set aside long after the
        # line returned. It still leaves a due phase-locked or safety poll its moment.
        probe, probe_wait = self._due_probe(now)
        if probe is not None and (plan is None or (not plan.phase_locked and plan.priority >= Priority.TELEMETRY)):
            request = read_request(probe.address, FENCE_ADDRESS, 1)
            locked = self._hold_back_until(request, now, probe.next_probe_at, None)
            if locked is not None and plan is None:
                return min(locked, probe.next_probe_at + self.hold_back_limit_s)
            if locked is None:
                await self._run_probe(probe)
                return None
        if plan is not None:
            locked = self._hold_back_until(plan.request, now, plan.next_due, plan)
            if locked is not None:
                return min(locked, plan.next_due + self.hold_back_limit_s)
            await self._run_poll(plan)
            return None
        wake = now + 0.5
        nxt = self.schedule.next_due_time(self._eligible)
        if nxt is not None:
            wake = min(wake, nxt)
        if probe_wait is not None:
            wake = min(wake, probe_wait)
        return wake

    def _expected_s(self, request: Request, link: SlaveLink, plan: PollPlan | None) -> float:
        deadline = self.timing.deadline_s(len(request.encode()), request.reply_length, link.turnaround_s)
        if plan is not None and plan.phase_locked:
            base = plan.lead_s + self.timing.wire_s(request.reply_length)
        elif link.service_period_s > 0:
            base = link.service_period_s + self.timing.wire_s(request.reply_length)
        else:
            base = link.rtt_ema if link.rtt_ema is not None else deadline
        return min(deadline, base * 1.3 + self.timing.silence_s + 0.0005)

    def _hold_back_until(
        self, request: Request, now: float, waiting_since: float, plan: PollPlan | None
    ) -> float | None:
        """The due time of the phase-locked poll that starting `request` now would collide with, if any."""
        if plan is not None and plan.phase_locked:
            return None
        if now - waiting_since > self.hold_back_limit_s:
            return None  # held back long enough: never starve
        locked = self.schedule.next_locked_due(self._eligible)
        if locked is None or locked <= now:
            return None
        link = self.link(request.slave)
        if now + self._expected_s(request, link, plan) > locked:
            return locked
        return None

    def _due_probe(self, now: float) -> tuple[SlaveLink | None, float | None]:
        """The set-aside slave to probe now, or (None, when to look again). See drivers/modbus/probes.py."""
        waiting = [
            ProbeCandidate(link.address, link.next_probe_at, link.service_period_s > 0)
            for link in self._links.values()
            if not link.online
        ]
        if not waiting:
            return None, None
        address, wait = pick_probe(waiting, now)
        return (self._links[address], None) if address is not None else (None, wait)

    async def _idle(self, wake_at: float) -> None:
        delay = wake_at - time.monotonic()
        if delay <= 0.0015:
            await pause_until(wake_at)
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._wakeup = fut
        handle = loop.call_later(delay - 0.001, self._wake)
        try:
            await fut
        finally:
            handle.cancel()
            self._wakeup = None

    def _wake(self) -> None:
        fut = self._wakeup
        if fut is not None and not fut.done():
            fut.set_result(None)

    # ----------------------------------------------------------------- work items
    async def _run_job(self, job: _Job) -> None:
        if job.future.done():
            return
        link = self.link(job.request.slave)
        try:
            if not link.online and job.priority not in STOPS:
                raise SlaveSetAside(f"slave {link.address} is set aside after repeated failures")
            regs = await self._perform(job.request, link, job.retries, Priority(job.priority), job.permit)
        except BusError as exc:
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(regs)

    async def _run_poll(self, plan: PollPlan) -> None:
        link = self.link(plan.slave)
        started = time.monotonic()
        self.schedule.started(plan, started)
        try:
            regs = await self._perform(plan.request, link, self.read_retries, plan.priority)
        except BusError as exc:
            done = time.monotonic()
            self.schedule.completed(plan, done)
            if plan.on_error is not None:
                self._safe_callback(plan.on_error, exc, done)
            return
        done = time.monotonic()
        if plan.phase_locked and done - started > plan.service_period_s / 2:
            link.stats.missed_ticks += (
                1  # answered a tick late: sent too late for its tick (a stop went first, a late loop)
            )
        self.schedule.completed(plan, done)
        self.stats.poll_overruns = self.schedule.overruns
        if plan.on_result is not None:
            self._safe_callback(plan.on_result, regs, done)

    @staticmethod
    def _safe_callback(cb: Callable[..., None], *args: Any) -> None:
        try:
            cb(*args)
        except Exception:
            log.exception("poll callback failed (bus continues)")

    async def _run_probe(self, link: SlaveLink) -> None:
        try:
            await self._attempt(read_request(link.address, FENCE_ADDRESS, 1), link)
        except ModbusExceptionReply:
            pass  # it answered: alive
        except BusPreempted:
            # Cut off for an urgent stop: not the slave's failure. Due again right after the stop,
            # with no longer back-off (each cut used to double it, up to its cap).
            return
        except BusError:
            now = time.monotonic()
            link.backoff_s = min(max(link.backoff_s * 2, self.probe_backoff_s[0]), self.probe_backoff_s[1])
            link.next_probe_at = now + link.backoff_s
            return
        self._mark_success(link)

    # ----------------------------------------------------------------- transactions
    async def _perform(
        self, request: Request, link: SlaveLink, retries: int, priority: Priority, permit: Permit | None = None
    ) -> tuple[int, ...]:
        last: BusError | None = None
        for attempt in range(retries + 1):
            if attempt:
                link.stats.retries += 1
                if priority != Priority.STOP:
                    await self._serve_stops()
            try:
                regs = await self._attempt(request, link, permit)
            except PermitRevoked:
                raise  # not the slave's fault, and never retried
            except ModbusExceptionReply:
                self._mark_success(link)
                raise
            except BusPreempted as exc:
                last = exc
                continue  # not the slave's fault: no failure is counted, the stop goes next
            except (BusTimeout, BusCrcError) as exc:
                last = exc
                continue
            self._mark_success(link)
            return regs
        assert last is not None
        if not isinstance(last, BusPreempted):
            self._mark_failure(link, last)
        raise last

    async def _serve_stops(self) -> None:
        """Between retries of a lesser request, let every queued stop go first."""
        while self._queue and self._queue[0].priority == Priority.STOP:
            await self._run_job(heapq.heappop(self._queue))

    async def _attempt(self, request: Request, link: SlaveLink, permit: Permit | None = None) -> tuple[int, ...]:
        if link.ghosts and request.signature() in link.ghosts:
            link.stats.fences += 1
            await self._transact(self._fence_for(link), link)
        return await self._transact(request, link, permit)

    def _stop_waiting(self) -> bool:
        return bool(self._queue) and self._queue[0].priority == Priority.STOP and not self._queue[0].future.done()

    def _stop_target(self) -> int | None:
        return self._queue[0].request.slave if self._queue else None

    @staticmethod
    def _preempt_after(link: SlaveLink) -> float:
        """How long a read may wait before a queued stop may abandon it.

        A slave that already missed replies (failures or ghosts pending) is not waited for at all;
        a healthy one gets twice its usual round trip, never more than 20 ms.
        """
        if link.consecutive_failures > 0 or link.ghosts:
            return 0.0
        typical = link.rtt_ema if link.rtt_ema is not None else link.turnaround_s
        return min(max(0.005, 2 * typical), 0.020)

    @staticmethod
    def _fence_for(link: SlaveLink) -> Request:
        for count in range(1, 11):
            fence = read_request(link.address, FENCE_ADDRESS, count)
            if fence.signature() not in link.ghosts:
                return fence
        link.ghosts.clear()  # cannot happen with MAX_GHOSTS distinct shapes < 10 read sizes, but stay safe
        return read_request(link.address, FENCE_ADDRESS, 1)

    async def _transact(self, request: Request, link: SlaveLink, permit: Permit | None = None) -> tuple[int, ...]:
        port = self.port
        await self._quiet()
        frame = request.encode()
        port.buffer.clear()
        self.on_wire = request
        try:
            sent_at = await self._send(frame, permit)
            self._reached_slave_at = sent_at + self.timing.wire_s(len(frame))
            link.stats.transactions += 1
            deadline = sent_at + self.timing.deadline_s(len(frame), request.reply_length, link.turnaround_s)
            preempt_at = sent_at + self._preempt_after(link)
            while True:
                result = self._scan(request, link)
                if result is not None:
                    link.note_rtt(time.monotonic() - sent_at)
                    return result
                now = time.monotonic()
                if now >= deadline:
                    link.stats.timeouts += 1
                    self._add_ghost(link, request.signature())
                    raise BusTimeout(
                        f"slave {request.slave} gave no valid reply within {1000 * (deadline - sent_at):.1f} ms"
                    )
                wait_until = deadline
                if self._stop_waiting() and not request.is_write and request.slave != self._stop_target():
                    # A stop is queued and this read is overdue: its slave is late or dead, and the
                    # stop must not wait out the whole deadline. Its reply, if it ever comes, is a ghost.
                    if now >= preempt_at and not port.buffer:
                        link.stats.preempted += 1
                        self._add_ghost(link, request.signature())
                        raise BusPreempted(
                            f"read from slave {request.slave} abandoned for a stop"
                            f" after {1000 * (now - sent_at):.1f} ms"
                        )
                    wait_until = min(deadline, preempt_at)
                await port.wait_data(wait_until)
        finally:
            self.on_wire = None

    async def _send(self, frame: bytes, permit: Permit | None) -> float:
        """Put the whole frame on the wire; returns when its first byte went to the kernel.

        An energising frame's permit is checked at the last moment before its first byte leaves,
        with no await between the check and the write. When the kernel's output buffer is full
        (a stuck line) the wait for room is an await on the loop, never a spin, and the permit is
        checked again after it: a stop that came meanwhile still holds the frame back. Once bytes
        have left, the frame is finished whatever happens.
        """
        port = self.port
        view = memoryview(frame)
        give_up = time.monotonic() + SEND_STALL_S
        sent_at: float | None = None
        while True:
            if sent_at is None and permit is not None:
                self.interlock.check(permit)
            now = time.monotonic()
            taken = port.write_some(view)
            if taken and sent_at is None:
                sent_at = now
                if permit is not None:
                    self.interlock.note_on_wire(sent_at)
            view = view[taken:]
            if not view and sent_at is not None:
                return sent_at
            await port.wait_writable(give_up)

    def _scan(self, request: Request, link: SlaveLink) -> tuple[int, ...] | None:
        """Consume complete frames from the buffer; return registers once the real reply is found."""
        buf = self.port.buffer
        while buf:
            n = frame_length(buf)
            if n is None:
                return None
            if n == 0:
                del buf[0]
                self.stats.garbage_bytes += 1
                continue
            if len(buf) < n:
                return None
            frame = bytes(buf[:n])
            del buf[:n]
            checked = check_reply(request, frame)
            verdict = checked.verdict
            if verdict is ReplyVerdict.OK:
                link.stats.ok += 1
                link.stats.last_ok_at = time.monotonic()
                link.ghosts.clear()  # in-order slave: anything older has come or never will
                self._note_reply(link, n)
                return checked.registers
            if verdict is ReplyVerdict.EXCEPTION:
                link.stats.exceptions += 1
                link.ghosts.clear()
                self._note_reply(link, n)
                raise ModbusExceptionReply(request.slave, request.function, checked.exception_code)
            if verdict is ReplyVerdict.CRC_ERROR:
                link.stats.crc_errors += 1
                self.stats.garbage_bytes += len(buf)
                buf.clear()
                # The damaged frame may have been a late reply and the real one may still come.
                self._add_ghost(link, request.signature())
                raise BusCrcError(f"reply from slave {request.slave} failed its CRC check")
            owner = link if verdict is ReplyVerdict.MISMATCH else self._links.get(checked.slave)
            self._drop_unsolicited(owner, checked.signature)
        return None

    def _note_reply(self, link: SlaveLink, reply_length: int) -> None:
        """Remember when the slave sent this reply; from a slave served once per tick, it dates a tick."""
        link.reply_sent_at = self.port.last_rx - self.timing.wire_s(reply_length)
        if link.service_period_s > 0:
            self.schedule.observe_tick(
                link.address,
                link.reply_sent_at,
                link.service_period_s,
                time.monotonic(),
                sent_at=self._reached_slave_at,
            )

    def _drop_unsolicited(self, owner: SlaveLink | None, signature: tuple[int, ...]) -> None:
        if owner is not None and signature in owner.ghosts:
            owner.ghosts.discard(signature)
            owner.stats.late_dropped += 1
        elif owner is not None:
            owner.stats.mismatched += 1
        else:
            self.stats.garbage_bytes += 1

    @staticmethod
    def _add_ghost(link: SlaveLink, signature: tuple[int, ...]) -> None:
        if len(link.ghosts) < MAX_GHOSTS:
            link.ghosts.add(signature)

    async def _quiet(self) -> None:
        """Drain stray input and keep t3.5 of silence before the next request goes out."""
        port = self.port
        port.read_now()
        self._scan_unsolicited()
        silence = self.timing.silence_s
        while port.is_open:
            wait_until = port.last_rx + silence
            if time.monotonic() >= wait_until:
                break
            await pause_until(wait_until)
            if port.read_now():
                self._scan_unsolicited()
        if port.buffer:
            self.stats.garbage_bytes += len(port.buffer)
            port.buffer.clear()
        if not port.is_open:
            raise PortUnavailable(f"{port.path} lost: {port.lost_reason or 'closed'}")

    def _scan_unsolicited(self) -> None:
        buf = self.port.buffer
        while buf:
            n = frame_length(buf)
            if n is None or (n and len(buf) < n):
                return
            if n == 0:
                del buf[0]
                self.stats.garbage_bytes += 1
                continue
            frame = bytes(buf[:n])
            del buf[:n]
            if not crc_ok(frame):
                self.stats.garbage_bytes += n
                continue
            self._drop_unsolicited(self._links.get(frame[0]), reply_signature(frame))

    # ----------------------------------------------------------------- health
    def _mark_success(self, link: SlaveLink) -> None:
        link.consecutive_failures = 0
        if not link.online:
            link.online = True
            link.backoff_s = 0.0
            self.schedule.realign(time.monotonic(), slave=link.address)  # the others keep their ticks
            self._emit("slave_online", address=link.address)

    def _mark_failure(self, link: SlaveLink, exc: BusError) -> None:
        link.consecutive_failures += 1
        # Only configured modules are set aside and probed; an empty address met while scanning
        # simply does not answer, and costs no bus time afterwards.
        if link.managed and link.online and link.consecutive_failures >= self.fail_threshold:
            link.online = False
            link.stats.set_aside += 1
            link.backoff_s = self.probe_backoff_s[0]
            link.next_probe_at = time.monotonic() + link.backoff_s
            self._emit("slave_offline", address=link.address, code=exc.code, reason=exc.message)

    def _on_port_lost(self, reason: str) -> None:
        self.stats.port_losses += 1
        self._emit("port_down", path=self.port.path, reason=reason)
        self._wake()

    async def _connect(self) -> None:
        delay, limit = self.reconnect_backoff_s
        first = True
        while not self._closing:
            self._fail_queue(PortUnavailable(f"{self.port.path} is not open ({self.port.lost_reason or 'connecting'})"))
            try:
                self.port.open()
            except PortUnavailable as exc:
                if first:
                    self._emit("port_unavailable", path=self.port.path, reason=exc.message)
                    first = False
                await self._sleep_unless_closing(delay)
                delay = min(delay * 2, limit)
                continue
            self.stats.reconnects += 1
            for link in self._links.values():
                link.ghosts.clear()
            self.schedule.realign(time.monotonic())
            self._emit("port_up", path=self.port.path)
            return

    async def _sleep_unless_closing(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._wakeup = fut
        handle = loop.call_later(delay, self._wake)
        try:
            await fut
        finally:
            handle.cancel()
            self._wakeup = None

    def _fail_queue(self, exc: BusError) -> None:
        while self._queue:
            job = heapq.heappop(self._queue)
            if not job.future.done():
                job.future.set_exception(exc)

    def _emit(self, kind: str, **info: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, info)
            except Exception:
                log.exception("bus event callback failed")
