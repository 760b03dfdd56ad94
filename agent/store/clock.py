"""Timestamps as stored: UTC, ISO-8601, fixed width, microseconds, 'Z'.

One fixed format ('YYYY-MM-DDTHH:MM:SS.ffffffZ') means that text comparison in SQL is time
comparison (`not_after <= ?` works on an index), and that every table reads the same way in the
sqlite3 shell, in JSON payloads and upstream.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["format_ts", "format_wall", "now_ts", "parse_ts", "utc_now"]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_ts(value: datetime) -> str:
    """Format an aware datetime as stored. Naive datetimes are refused: their zone is a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return value.astimezone(UTC).strftime(_FORMAT)


def format_wall(seconds: float) -> str:
    """A `time.time()` value as stored."""
    return format_ts(datetime.fromtimestamp(seconds, UTC))


def parse_ts(text: str) -> datetime:
    """Parse a stored timestamp back into an aware UTC datetime."""
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)


def now_ts() -> str:
    """The current UTC time as stored (a hot path: formatted without strftime)."""
    ns = time.time_ns()
    seconds, micros = divmod(ns // 1000, 1_000_000)
    t = time.gmtime(seconds)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d}Z"
