"""The names of the local API's permissions, and nothing else.

The matrix of which role holds which permission is `agent.api.permissions`. The names live here,
beside the role names (`agent.auth.roles`), because the core needs some of them too: the command
catalogue (`agent.control.catalogue`) says which permission each command type needs. The core
must not import the HTTP layer, and this module imports nothing, so both halves can use it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Permission"]


class Permission(StrEnum):
    PUBLIC = "public"  # no credentials: health, readiness, login, the status page
    SELF = "self"  # own session: logout, own password, stream tickets
    READ = "read"  # status, modules, commands, metrics, stream
    ESTOP = "estop"
    COMMAND = "command"  # submit and cancel ordinary commands
    FAULT_RESET = "fault_reset"
    MAINTENANCE = "maintenance"  # module_reset, register_write
    USERS = "users"
    API_KEYS = "api_keys"
    AUDIT = "audit"
    CONFIGURE = "configure"
