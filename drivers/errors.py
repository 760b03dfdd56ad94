"""Moved to `oht_errors` (a package below drivers/ and agent/); this name stays for one release."""

from __future__ import annotations

from oht_errors import CodedError, ErrorKind

__all__ = ["CodedError", "ErrorKind"]
