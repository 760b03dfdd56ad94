"""The control socket: newline-delimited JSON over a Unix stream socket, inside the sim's loop.

One request line -> one response line, ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.
Several clients may be connected at once. Nothing a client sends can stop the simulator: a bad
line gets an error response, an over-long line closes that one connection.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sim.control")

#: A request line longer than this closes the connection (nothing legitimate is that long).
MAX_LINE = 1 << 20

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _prepare_path(path: str) -> None:
    """Remove a stale socket file; refuse to take over a live socket or a non-socket file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"control path exists and is not a socket: {path}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listening: stale
    else:
        raise OSError(errno.EADDRINUSE, f"control socket in use by another process: {path}")
    finally:
        probe.close()


class _Connection:
    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False

    def on_event(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read()
        if not self.closed and mask & selectors.EVENT_WRITE:
            self._flush()

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbuf += data
        while True:
            end = self.inbuf.find(b"\n")
            if end < 0:
                break
            line = bytes(self.inbuf[:end])
            del self.inbuf[: end + 1]
            if line.strip():
                self._respond(self.server.dispatch_line(line))
        if len(self.inbuf) > MAX_LINE:
            self._respond({"ok": False, "error": f"request line longer than {MAX_LINE} bytes"})
            self.inbuf.clear()
            self._flush()
            self.close()

    def _respond(self, response: dict[str, Any]) -> None:
        self.outbuf += json.dumps(response, separators=(",", ":")).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        while self.outbuf and not self.closed:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            del self.outbuf[:sent]
        if self.closed:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.server.selector.modify(self.sock, events, self.on_event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.server.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.server.connections.discard(self)


class ControlServer:
    def __init__(self, path: str, selector: selectors.BaseSelector, handler: Handler) -> None:
        self.path = path
        self.selector = selector
        self.handler = handler
        self.connections: set[_Connection] = set()
        self.listener: socket.socket | None = None

    def start(self) -> None:
        _prepare_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(16)
        sock.setblocking(False)
        self.listener = sock
        self.selector.register(sock, selectors.EVENT_READ, self._accept)

    def _accept(self, mask: int) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = _Connection(self, sock)
        self.connections.add(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn.on_event)

    def dispatch_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        try:
            return self.handler(request)
        except Exception as exc:  # a control bug must not kill the data path
            log.exception("control request %r failed", request)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self.listener is not None:
            try:
                self.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
