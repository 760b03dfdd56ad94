"""The protocol between the core and the gateway: framing, messages, versions, error codes.

One module on purpose: both processes import it, and `docs/core-protocol.md` describes exactly
what is declared here. A frame is a 4-byte big-endian length followed by that many bytes of one
UTF-8 JSON object. Every object has a type `t`:

- `hello` (each side, first frame): `{t, v, role, agent_id?, pid}`. A peer speaking another
  major version `v` is disconnected with `CORE_PROTOCOL`.
- `req` (gateway -> core): `{t, id, op, deadline_ms, args}`. `id` is the gateway's, unique per
  connection; `deadline_ms` is how long the gateway will wait: the core does not start a request
  whose deadline has passed.
- `rep` (core -> gateway): `{t, id, ok: true, result}` or `{t, id, ok: false, error: {code,
  message, hint}}`.
- `view` (core -> gateway): `{t, v, seq, status, modules}`: the status document and the module
  views, sent when the status changes and at a fixed interval otherwise.

Bounds: a frame is at most `MAX_FRAME` bytes; a larger length prefix ends the connection (the
stream cannot be resynchronised).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any, Final, Literal, TypedDict

from oht_errors import CodedError, ErrorKind

__all__ = [
    "MAX_FRAME",
    "OPS",
    "PROTOCOL_VERSION",
    "VIEW_VERSION",
    "CoreBusy",
    "CoreRequestInvalid",
    "CoreTimeout",
    "CoreUnavailable",
    "FrameDecoder",
    "ProtocolError",
    "encode",
    "error_reply",
    "hello",
]

PROTOCOL_VERSION: Final = 1
VIEW_VERSION: Final = 1  # the shape of `view.status` and `view.modules`
MAX_FRAME: Final = 1 << 20
_HEADER = struct.Struct(">I")

# What the gateway may ask of the core (docs/core-protocol.md has the arguments of each).
OPS: Final = frozenset({"ping", "submit_command", "cancel_command", "estop", "reset"})

Role = Literal["core", "gateway"]


class Hello(TypedDict):
    t: Literal["hello"]
    v: int
    role: Role
    pid: int
    agent_id: str


class ProtocolError(CodedError):
    code = "CORE_PROTOCOL"
    kind = ErrorKind.UNAVAILABLE
    hint = "the core and the gateway must come from the same release; restart both (systemctl restart oht-agent.target)"


class CoreUnavailable(CodedError):
    """The core cannot be reached: not running, restarting, or its socket refuses the gateway."""

    code = "CORE_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE
    hint = (
        "the core process (bus, safety, control) is not connected; it is restarted by systemd "
        "(journalctl -u oht-agent-core); the robot stops by itself when the core is down"
    )


class CoreRequestInvalid(CodedError):
    """The core could not read a request of the gateway: the two disagree on the protocol."""

    code = "CORE_REQUEST_INVALID"
    kind = ErrorKind.INTERNAL
    hint = (
        "the gateway sent a request the core cannot read: a bug, or the two come from different releases;"
        " send both logs"
    )


class CoreBusy(CodedError):
    """The core refused the request to keep its own loop on time."""

    code = "CORE_BUSY"
    kind = ErrorKind.UNAVAILABLE
    hint = "too many requests reached the core at once; retry shortly (the E-stop is never refused for load)"


class CoreTimeout(CodedError):
    code = "CORE_TIMEOUT"
    kind = ErrorKind.UNAVAILABLE
    hint = "the core did not answer within the request's deadline; check the core's log before retrying"


def encode(message: dict[str, Any]) -> bytes:
    """One frame: length prefix plus compact JSON (no NaN: JSON has none)."""
    body = json.dumps(message, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(
            f"a {message.get('t')} message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit"
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Turns a byte stream into messages; raises ProtocolError when the stream is not the protocol."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        """Messages completed by `data`, in order (a generator: parse them as they are taken)."""
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max_frame:
                raise ProtocolError(f"frame of {length} bytes announced (limit {self._max_frame})")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            try:
                message = json.loads(body)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ProtocolError(f"a frame is not JSON: {exc}") from None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise ProtocolError("a frame is not an object with a type `t`")
            yield message


def hello(role: Role, agent_id: str, pid: int) -> Hello:
    return {"t": "hello", "v": PROTOCOL_VERSION, "role": role, "pid": pid, "agent_id": agent_id}


def check_hello(message: dict[str, Any], expect: Role) -> None:
    if message.get("t") != "hello" or message.get("role") != expect:
        raise ProtocolError(f"expected a hello from the {expect}, got {message.get('t')!r}")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"the {expect} speaks protocol version {message.get('v')!r}, this side {PROTOCOL_VERSION}")


def error_reply(request_id: Any, error: CodedError | dict[str, Any]) -> dict[str, Any]:
    """A refusal; the error's kind travels with it, so the gateway answers the status of the kind."""
    body = {**error.as_dict(), "kind": error.kind.value} if isinstance(error, CodedError) else error
    return {"t": "rep", "id": request_id, "ok": False, "error": body}


def ok_reply(request_id: Any, result: Any) -> dict[str, Any]:
    return {"t": "rep", "id": request_id, "ok": True, "result": result}


def remote_error(body: dict[str, Any]) -> CodedError:
    """The gateway-side exception for an error the core replied with (same code, kind and hint)."""
    code = str(body.get("code") or "INTERNAL")
    known: dict[str, type[CodedError]] = {
        cls.code: cls for cls in (CoreBusy, CoreTimeout, CoreUnavailable, CoreRequestInvalid, ProtocolError)
    }
    cls = known.get(code, CodedError)
    try:
        kind = ErrorKind(str(body.get("kind")))
    except ValueError:
        kind = cls.kind  # an unknown kind is answered as the class's (INTERNAL for an unknown code)
    return cls(str(body.get("message") or code), code=code, hint=str(body.get("hint") or "") or None, kind=kind)
