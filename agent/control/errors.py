"""Errors of the control layer that are not tied to one of its modules.

`ModuleNotFound` is raised on both sides of the core link (the controller in the core, the link
client in the gateway), so it lives here rather than next to the status document it used to
share a module with.
"""

from __future__ import annotations

from oht_errors import CodedError, ErrorKind

__all__ = ["ModuleNotFound"]


class ModuleNotFound(CodedError):
    """No module is bound for the role asked for."""

    code = "MODULE_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND
    hint = "use a role name: power, safety, travel, dock"
