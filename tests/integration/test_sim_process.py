"""The simulator as a process: the line, wire timing, the control socket's robustness, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from agent.launcher import CORE_FIFO_PRIORITY
from drivers.sim.client import SIM_REALTIME_PRIORITY, SimControl, SimControlError, SimProcess
from drivers.sim.main import build_parser
from tests.integration.test_sim_support import (  # noqa: F401  (fixtures)
    NoReply,
    RtuPort,
    make_sim,
    port,
    read_frame,
    sim,
    wait_for,
)


def test_ready_line_and_sigterm_cleanup(tmp_path: Path) -> None:
    link, ctl = tmp_path / "bus", tmp_path / "c.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.sim", "--link", str(link), "--control", str(ctl), "--slave", "3:travel-drvfw"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"SIM READY link={link} control={ctl} pid={proc.pid}"
        assert os.path.islink(link) and os.readlink(link).startswith("/dev/pts/")
        assert SimControl(ctl).ping()["slaves"] == {"3": "travel-drvfw"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert not os.path.lexists(link) and not os.path.exists(ctl)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_started_simulator_outranks_the_core_where_realtime_is_allowed(sim: SimProcess) -> None:
    """The modules never wait for the carriage's computer, so neither does their stand-in."""
    assert sim.pid is not None
    probe = subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        assert os.sched_getscheduler(sim.pid) == os.SCHED_OTHER
        assert "staying at the ordinary priority" in sim.log_tail()
        return
    assert os.sched_getscheduler(sim.pid) == os.SCHED_FIFO
    assert os.sched_getparam(sim.pid).sched_priority == SIM_REALTIME_PRIORITY > CORE_FIFO_PRIORITY


def test_stale_symlink_and_socket_are_replaced(make_sim: Callable[..., SimProcess], tmp_path: Path) -> None:
    os.symlink("/dev/pts/does-not-exist", tmp_path / "bus")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "bus.ctl"))
    stale.close()  # a socket file nobody listens on
    sim = make_sim()
    assert os.readlink(sim.link) == sim.control.ping()["pty"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slave", "3:no-such-profile"], "not found"),
        (["--slave", "3"], "ADDR:PROFILE"),
        (["--slave", "3:travel-drvfw", "--slave", "3:power-v2"], "duplicate"),
        (["--service-period", "9:10"], "not served"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "drivers.sim", "--link", str(tmp_path / "bus"), *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2 and message in result.stderr
    assert not os.path.lexists(tmp_path / "bus")


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["--link", "/tmp/x"])
    assert args.wire_baud == 0 and args.slave is None and args.control is None
    assert Path(args.profiles, "safety-safefw.toml").is_file()


def test_line_down_and_up(sim: SimProcess) -> None:
    port = RtuPort(sim.link)
    port.write_many(3, 0x000A, [10_000, 10_000])
    for address, value in ((0x0002, 100), (0x0004, 1), (0x0001, 1)):
        port.write(3, address, value)
    old_pty = os.readlink(sim.link)
    sim.control.line(False)
    assert not os.path.lexists(sim.link)
    with pytest.raises(serial.SerialException):  # the open port errors out, it does not hang
        for _ in range(3):
            port.ser.write(read_frame(3, 0, 1))
            port.ser.read(5)
    port.close()
    with pytest.raises(serial.SerialException):
        serial.Serial(sim.link)
    pos_down = sim.control.read(3, 0x000E)[0]
    time.sleep(0.2)
    assert sim.control.read(3, 0x000E)[0] > pos_down  # the firmware keeps running meanwhile
    up = sim.control.line(True)
    assert up["line_up"] and os.readlink(sim.link) == up["pty"]
    port = RtuPort(sim.link)
    try:
        assert port.read(3, 0x0100) == [3]
        assert port.read(3, 0x0001) == [1]  # the driver never stopped
    finally:
        port.close()
    assert isinstance(old_pty, str)


def median_elapsed(port: RtuPort, frame: bytes, n: int = 15) -> float:
    times = []
    for _ in range(n):
        reply, elapsed = port.transact(frame)
        assert reply is not None
        times.append(elapsed)
    return statistics.median(times)


def test_wire_emulation_timing(make_sim: Callable[..., SimProcess]) -> None:
    sim = make_sim(wire_baud=115200)
    port = RtuPort(sim.link)
    try:
        frame = read_frame(2, 0, 10)  # 8-byte request, 25-byte reply: (8 + 3.5 + 25) x 86.8 us = 3.17 ms
        times = []
        for _ in range(20):
            reply, elapsed = port.transact(frame)
            assert reply is not None and len(reply) == 25
            times.append(elapsed)
        assert min(times) >= 0.0031, min(times)
        assert statistics.median(times) < 0.005, times
        sim.control.wire(9600)  # 10 bits / 9600 = 1.04 ms per char: 38 ms
        assert 0.037 <= median_elapsed(port, frame, 5) < 0.045
        sim.control.wire(0)
        assert median_elapsed(port, frame) < 0.001
    finally:
        port.close()


def raw_exchange(path: str, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_malformed_control_requests_get_errors(sim: SimProcess) -> None:
    path = sim.control_path
    bad = [
        b"not json",
        b"[1, 2]",
        b'{"no_op": 1}',
        b'{"op": "fly"}',
        b'{"op": "silence", "addr": "3"}',
        b'{"op": "delay", "addr": 2}',
        b'{"op": "set", "addr": 3, "address": 512, "value": 1}',
        b'{"op": "obstacle", "sensor": 9, "value": 1}',
        b'{"op": "estop", "pressed": 1}',
        b'{"op": "read", "addr": 2, "address": 44, "count": 2}',
        b"\xff\xfe",
        b'{"op": "writes", "since": "yesterday"}',
        b'{"op": "estop", "pressed": true, "addr": 3}',
    ]
    responses = raw_exchange(path, b"\n".join(bad) + b"\n")
    assert len(responses) == len(bad)
    assert all(r["ok"] is False and r["error"] for r in responses), responses
    assert sim.control.ping()["pid"] == sim.pid
    # An over-long line closes that connection only.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        try:
            s.sendall(b"x" * (2 << 20))
        except OSError:
            pass
    assert sim.control.ping()["pid"] == sim.pid
    with pytest.raises(SimControlError, match="unknown op"):
        sim.control.request("teleport")


def test_several_control_clients_at_once(sim: SimProcess) -> None:
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(5)]
    try:
        for c in clients:
            c.settimeout(2)
            c.connect(sim.control_path)
        for i, c in enumerate(clients):  # interleaved, several requests per connection
            c.sendall(b'{"op": "ping"}\n{"op": "read", "addr": 2, "address": 256}\n' if i % 2 else b'{"op":"stats"}\n')
        for i, c in enumerate(clients):
            data = b""
            want = 2 if i % 2 else 1
            while data.count(b"\n") < want:
                data += c.recv(65536)
            replies = [json.loads(line) for line in data.splitlines()]
            assert all(r["ok"] for r in replies)
            if i % 2:
                assert replies[1]["values"] == [2]
    finally:
        for c in clients:
            c.close()


def test_simprocess_reports_a_failed_start(tmp_path: Path) -> None:
    (tmp_path / "bus").write_text("a regular file is in the way")
    with pytest.raises(RuntimeError, match="before READY"):
        SimProcess(tmp_path / "bus").start()
    assert (tmp_path / "bus").read_text().startswith("a regular file")
