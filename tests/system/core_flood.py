"""A flood of requests on the core's socket, from a separate process at the gateway's priority.

Run as `python -m tests.system.core_flood SOCKET SECONDS`; prints one JSON line with how many
requests it sent, how many replies came back and how many of them were CORE_BUSY.

Only the gateway's user may reach the core's socket, and the gateway runs below the core's
priority (real-time under systemd, `GATEWAY_NICE` under the launcher). The flood therefore runs at
that niceness too: a peer on the socket never outranks the core, and a test that flooded from
the test runner's own priority would measure a machine no carriage is.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

from agent.launcher import GATEWAY_NICE


def frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def flood(path: str, seconds: float) -> dict[str, int]:
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(path)
    peer.sendall(frame({"t": "hello", "v": 1, "role": "gateway", "pid": os.getpid(), "agent_id": "x"}))
    peer.settimeout(0.5)
    sent, received = 0, b""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        batch = b"".join(
            frame({"t": "req", "id": sent + i, "op": "ping", "deadline_ms": 1000, "args": {}}) for i in range(200)
        )
        peer.sendall(batch)
        sent += 200
        try:
            received += peer.recv(1 << 20)
        except TimeoutError:
            pass
    drain_until = time.monotonic() + 2.0  # the replies still on their way (views keep coming: bounded by time)
    try:
        while time.monotonic() < drain_until:
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pass
    peer.close()
    answered = busy = offset = 0
    while offset + 4 <= len(received):
        (length,) = struct.unpack_from(">I", received, offset)
        if offset + 4 + length > len(received):
            break
        message = json.loads(received[offset + 4 : offset + 4 + length])
        offset += 4 + length
        if message.get("t") == "rep":
            answered += 1
            busy += (message.get("error") or {}).get("code") == "CORE_BUSY"
    return {"sent": sent, "answered": answered, "busy": busy}


if __name__ == "__main__":
    os.nice(GATEWAY_NICE)
    print(json.dumps(flood(sys.argv[1], float(sys.argv[2]))))
