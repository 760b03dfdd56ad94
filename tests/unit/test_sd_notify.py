"""sd_notify never blocks the caller: a receiver that does not read costs dropped messages, not a stall."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from drivers.watchdog import SdNotifier


def unread_socket(path: Path) -> socket.socket:
    """systemd's end, bound but never read: the kernel queues a few datagrams, then refuses more."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


@pytest.mark.timeout(10)  # a blocking send would wait here for ever
def test_a_full_notify_socket_drops_and_counts_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = unread_socket(tmp_path / "notify.sock")
    clock = [100.0]
    notifier = SdNotifier(str(tmp_path / "notify.sock"), log_every_s=10.0, clock=lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="oht.watchdog")
    slowest = 0.0
    results = []
    for _ in range(60):
        started = time.perf_counter()
        results.append(notifier.watchdog())
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05, f"a notification took {slowest * 1000:.1f} ms"
    delivered = results.count(True)
    assert 1 <= delivered < 60, "the kernel's queue should have filled"
    assert results[delivered:] == [False] * (60 - delivered), "once full, every later message is dropped"
    assert notifier.sent == delivered
    assert notifier.dropped == notifier.missed_pings == 60 - delivered
    warnings = [r for r in caplog.records if r.name == "oht.watchdog"]
    assert len(warnings) == 1, "drops are logged at most once per interval"
    assert "WATCHDOG=1" in warnings[0].getMessage()
    clock[0] += 10.0
    assert notifier.status("still here") is False
    assert len([r for r in caplog.records if r.name == "oht.watchdog"]) == 2
    assert notifier.dropped == 60 - delivered + 1 and notifier.missed_pings == 60 - delivered  # a STATUS is not a ping
    # systemd reads again: notifications flow again, nothing was retried meanwhile.
    receiver.setblocking(False)
    queued = 0
    while True:
        try:
            receiver.recv(4096)
            queued += 1
        except BlockingIOError:
            break
    assert queued == delivered
    assert notifier.watchdog() is True
    assert receiver.recv(4096) == b"WATCHDOG=1"
    notifier.close()
    receiver.close()


def test_a_missing_socket_is_a_dropped_message_not_an_error(tmp_path: Path) -> None:
    notifier = SdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.ready("x") is False
    assert notifier.dropped == 1 and notifier.missed_pings == 0


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled
    assert notifier.watchdog() is False
    assert notifier.dropped == 0
