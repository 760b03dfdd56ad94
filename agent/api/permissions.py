"""The one permission matrix of the local API.

Every route declares exactly one `Permission` through `agent.api.deps.require`; a test walks
`app.routes` and fails for any route without one. Roles are cumulative: each role holds every
permission of the role below it plus its own:

    viewer      read status, modules, commands, metrics; open the stream; E-stop; own session
    operator    + submit and cancel commands (motion, stop, pause/resume, charging)
    technician  + fault reset, module maintenance (command types module_reset, register_write)
    admin       + users, API keys, configuration, audit log

E-stop is a viewer permission on purpose: whoever can see the robot must be able to stop it
(the old backend let only admins do that).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from agent.auth.roles import ROLES

__all__ = [
    "COMMAND_TYPE_PERMISSION",
    "ROLE_PERMISSIONS",
    "Permission",
    "allowed",
    "command_permission",
]


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


_GRANTS: Mapping[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.SELF, Permission.READ, Permission.ESTOP}),
    "operator": frozenset({Permission.COMMAND}),
    "technician": frozenset({Permission.FAULT_RESET, Permission.MAINTENANCE}),
    "admin": frozenset({Permission.USERS, Permission.API_KEYS, Permission.AUDIT, Permission.CONFIGURE}),
}


def _cumulative() -> dict[str, frozenset[Permission]]:
    out: dict[str, frozenset[Permission]] = {}
    held: frozenset[Permission] = frozenset({Permission.PUBLIC})
    for role in ROLES:
        held = held | _GRANTS[role]
        out[role] = held
    return out


ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = _cumulative()

# Command types that need more than Permission.COMMAND.
COMMAND_TYPE_PERMISSION: Mapping[str, Permission] = {
    "module_reset": Permission.MAINTENANCE,
    "register_write": Permission.MAINTENANCE,
}


def allowed(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def command_permission(command_type: str) -> Permission:
    return COMMAND_TYPE_PERMISSION.get(command_type, Permission.COMMAND)
