"""JSON as stored: canonical text, so that equal values are equal strings.

Why canonical: the idempotency check compares a repeated request with the stored one, and
comparing canonical text (sorted keys, no spaces) is exact and cheap, without decoding every row.
NaN and Infinity are refused: they are not JSON and the upstream server would reject them.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "loads"]


def dumps(value: Any) -> str:
    """Canonical JSON text; raises TypeError/ValueError for values JSON cannot carry."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
