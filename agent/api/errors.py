"""Error responses: `{"code", "message", "hint"?, "request_id"}`, never a traceback or a path.

Statuses come from the error's stable code: first the API's own table below, then the core's
`ERROR_STATUS` (prefix match, longest prefix first). For 5xx answers the message is scrubbed of
file system paths (the full text is in the log, under the same request id).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from agent.auth.errors import LoginThrottled
from agent.control.facade import ERROR_STATUS
from drivers.errors import CodedError

__all__ = [
    "API_ERROR_STATUS",
    "ApiError",
    "error_response",
    "install_handlers",
    "status_for",
]

log = logging.getLogger("oht.api")

API_ERROR_STATUS: Mapping[str, int] = {
    "AUTH_REQUIRED": 401,
    "AUTH_INVALID": 401,
    "AUTH_EXPIRED": 401,
    "AUTH_FAILED": 401,
    "AUTH_THROTTLED": 429,
    "AUTH_PASSWORD_MISMATCH": 403,
    "AUTH_SESSION_REQUIRED": 409,
    "AUTH_PERSON_REQUIRED": 403,
    "AUTH_CURRENT_PASSWORD_REQUIRED": 403,
    "PERMISSION_DENIED": 403,
    "ROLE_NOT_ALLOWED": 403,
    "ROLE_INVALID": 422,
    "PASSWORD_REJECTED": 422,
    "USER_NAME_INVALID": 422,
    "USER_EXISTS": 409,
    "USER_NOT_FOUND": 404,
    "USER_LAST_ADMIN": 409,
    "API_KEY_NOT_FOUND": 404,
    "API_KEY_INVALID": 422,
    "REQUEST_INVALID": 422,
    "REQUEST_MALFORMED": 400,
    "REQUEST_TOO_LARGE": 413,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "NOT_READY": 503,
    "NOT_ALIVE": 503,
    "RESET_INCOMPLETE": 409,
    "STREAM_FULL": 503,
    "ORIGIN_NOT_ALLOWED": 403,
    "API_BUSY": 503,
    # New commands refused while the outbox cannot keep their results (the link upstream is down
    # too long); stop, pause and charge_stop are still taken, and the E-stop is no command at all.
    "OUTBOX_FULL": 503,
    "INTERNAL": 500,
}

_PREFIXES = sorted(ERROR_STATUS.items(), key=lambda item: len(item[0]), reverse=True)
_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


class ApiError(CodedError):
    """An error raised by the HTTP layer itself (status from API_ERROR_STATUS by code)."""


def status_for(code: str) -> int:
    if code in API_ERROR_STATUS:
        return API_ERROR_STATUS[code]
    for prefix, status in _PREFIXES:
        if code.startswith(prefix):
            return status
    return 500


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
    status = status_for(exc.code)
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
