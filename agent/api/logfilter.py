"""Keeps credentials out of log lines that the web server writes on its own.

uvicorn logs each WebSocket handshake with its full URL, which carries the stream ticket. The
ticket is single-use and short-lived, but a log is no place for any credential: this filter
rewrites such values to `<redacted>` before the record reaches a handler.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactCredentials", "install"]

_PATTERN = re.compile(r"((?:ticket|token|password|key|secret)=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def redact(text: str) -> str:
    return _BEARER.sub(r"\1<redacted>", _PATTERN.sub(r"\1<redacted>", text))


class RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = RedactCredentials()


def install() -> None:
    """Attach the filter to the web server's loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
