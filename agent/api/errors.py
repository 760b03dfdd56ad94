"""Error responses: `{"code", "message", "hint"?, "request_id"}`, never a traceback or a path.

The status comes from the error's kind (`STATUS`, the one table from kinds to statuses): every
`CodedError` class declares its kind, and the codes the HTTP layer answers by itself are declared
in `API_CODES` with theirs. For 5xx answers the message is scrubbed of file system paths (the
full text is in the log, under the same request id).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from agent.auth.errors import LoginThrottled
from oht_errors import CodedError, ErrorKind

__all__ = [
    "API_CODES",
    "STATUS",
    "ApiCode",
    "ApiError",
    "error_response",
    "install_handlers",
    "status_for",
]

log = logging.getLogger("oht.api")

STATUS: Mapping[ErrorKind, int] = MappingProxyType(
    {
        ErrorKind.MALFORMED: 400,
        ErrorKind.UNAUTHENTICATED: 401,
        ErrorKind.FORBIDDEN: 403,
        ErrorKind.NOT_FOUND: 404,
        ErrorKind.METHOD_NOT_ALLOWED: 405,
        ErrorKind.CONFLICT: 409,
        ErrorKind.PAYLOAD_TOO_LARGE: 413,
        ErrorKind.INVALID: 422,
        ErrorKind.TOO_MANY_REQUESTS: 429,
        ErrorKind.INTERNAL: 500,
        ErrorKind.UNAVAILABLE: 503,
    }
)


def status_for(kind: ErrorKind) -> int:
    return STATUS[kind]


@dataclass(frozen=True)
class ApiCode:
    """A code the HTTP layer answers without an exception class (a route or a handler builds the body)."""

    kind: ErrorKind
    meaning: str
    hint: str

    @property
    def status(self) -> int:
        return STATUS[self.kind]


API_CODES: Mapping[str, ApiCode] = MappingProxyType(
    {
        "REQUEST_MALFORMED": ApiCode(
            ErrorKind.MALFORMED, "The request body is not JSON, or the request cannot be read.",
            "Send a JSON object with Content-Type: application/json.",
        ),
        "REQUEST_INVALID": ApiCode(
            ErrorKind.INVALID, "A field of the request is missing or refused (listed in `fields`).",
            "Fix the fields listed in `fields`.",
        ),
        "REQUEST_TOO_LARGE": ApiCode(
            ErrorKind.PAYLOAD_TOO_LARGE, "The request body is larger than the agent accepts.",
            "Send a smaller body; no request of the API needs more than a few kilobytes.",
        ),
        "NOT_FOUND": ApiCode(
            ErrorKind.NOT_FOUND, "No route has this path.", "See GET /openapi.json for the routes.",
        ),
        "METHOD_NOT_ALLOWED": ApiCode(
            ErrorKind.METHOD_NOT_ALLOWED, "The path exists but not for this method.",
            "Use one of the methods in the Allow header.",
        ),
        "NOT_READY": ApiCode(
            ErrorKind.UNAVAILABLE, "GET /readyz: the bus, a mandatory module or the database is not up.",
            "See `reasons`: the bus, the mandatory modules and the database must all be up.",
        ),
        "NOT_ALIVE": ApiCode(
            ErrorKind.UNAVAILABLE, "GET /healthz: a task of the agent ended; the watchdog restarts it.",
            "The agent will be restarted by its watchdog; check the log for the task named here.",
        ),
        "RESET_INCOMPLETE": ApiCode(
            ErrorKind.CONFLICT, "POST /api/v1/reset: some latched faults could not be cleared (listed in `remaining`).",
            "Remove the cause of each remaining fault (see `remaining`), then reset again.",
        ),
        "ESTOP_NOT_CONFIRMED": ApiCode(
            ErrorKind.UNAVAILABLE, "POST /api/v1/estop: the stop was sent but the bus did not confirm it.",
            "Use the hardware E-stop; the agent keeps retrying the stop writes.",
        ),
        "API_BUSY": ApiCode(
            ErrorKind.UNAVAILABLE, "Too many requests are being served; this one was not started.",
            "Retry shortly; the E-stop and the health probes never wait.",
        ),
        "STREAM_FULL": ApiCode(
            ErrorKind.UNAVAILABLE, "The status stream has as many clients as it serves.",
            "Close another stream client, or poll GET /api/v1/status instead.",
        ),
        "INTERNAL": ApiCode(
            ErrorKind.INTERNAL, "An unexpected error; the agent log has the details under the request id.",
            "Send the agent log lines with this request id to the developers.",
        ),
    }
)  # fmt: skip


class ApiError(CodedError):
    """An error raised by the HTTP layer itself."""

    code = "API_ERROR"
    kind = ErrorKind.INVALID
    hint = "The HTTP layer refused the request: the message says why."


_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_body(code: str, message: str, hint: str | None, request_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if hint:
        body["hint"] = hint
    body["request_id"] = request_id
    body.update(extra)
    return body


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    hint: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one shape of every error; also records the code for the audit row and the metrics."""
    request.state.error_code = code
    out_headers = dict(headers or {})
    if status == 401:
        out_headers.setdefault("WWW-Authenticate", 'Bearer realm="oht-agent"')
    return JSONResponse(
        error_body(code, message, hint, _request_id(request), **extra), status_code=status, headers=out_headers
    )


# Answers that shed load or report the core away: expected under a flood or a core restart, so
# they are counted and logged as a warning at most every `_SHED_LOG_S`, not once per request.
_SHED_CODES = frozenset({"CORE_BUSY", "CORE_UNAVAILABLE"})
_SHED_LOG_S = 10.0
_shed = {"count": 0, "logged_at": float("-inf")}


def _log_failure(request: Request, exc: CodedError) -> None:
    if exc.code not in _SHED_CODES:
        log.error("request %s failed: %s", _request_id(request), exc)
        return
    _shed["count"] += 1
    now = time.monotonic()
    if now - _shed["logged_at"] >= _SHED_LOG_S:
        log.warning(
            "%d request(s) answered 503 (CORE_BUSY or CORE_UNAVAILABLE) since the last such warning; last: %s",
            _shed["count"],
            exc,
        )
        _shed["count"], _shed["logged_at"] = 0, now


def coded_response(request: Request, exc: CodedError) -> JSONResponse:
    status = status_for(exc.kind)
    message = exc.message
    if status >= 500:
        _log_failure(request, exc)
        message = _PATH_RE.sub("<path>", message.splitlines()[0] if message else exc.code)[:500]
    headers = {}
    if isinstance(exc, LoginThrottled):
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.code == "CORE_BUSY":
        headers["Retry-After"] = "1"
    return error_response(request, status, exc.code, message, exc.hint or None, headers=headers)


async def _on_coded(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CodedError)
    return coded_response(request, exc)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts) or "request"


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(
            request, 400, "REQUEST_MALFORMED", "the request body is not valid JSON",
            "Send a JSON object with Content-Type: application/json.",
        )  # fmt: skip
    # Never echo the input back: it may hold a password.
    fields = sorted({_field(e.get("loc", ())) for e in errors})
    details = "; ".join(f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:10])
    return error_response(
        request, 422, "REQUEST_INVALID", f"invalid request: {details}",
        "Fix the fields listed in `fields`.", fields=fields,
    )  # fmt: skip


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(request, 404, "NOT_FOUND", f"no such resource: {request.url.path[:200]}",
                              "See GET /openapi.json for the routes.")  # fmt: skip
    if exc.status_code == 405:
        return error_response(request, 405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here",
                              headers=dict(exc.headers or {}))  # fmt: skip
    if exc.status_code == 400:
        return error_response(request, 400, "REQUEST_MALFORMED", "the request could not be read")
    code = {401: "AUTH_REQUIRED", 403: "PERMISSION_DENIED", 413: "REQUEST_TOO_LARGE"}.get(
        exc.status_code, f"HTTP_{exc.status_code}"
    )
    return error_response(request, exc.status_code, code, str(exc.detail)[:200])


def install_handlers(app: Any) -> None:
    """Register the handlers; anything else is caught by the middleware as INTERNAL."""
    app.add_exception_handler(CodedError, _on_coded)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
