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

The permission names are `agent.auth.permissions.Permission` (re-exported here), so that the
command catalogue in the core can name the permission of each command type without importing
the HTTP layer; which permission a command type needs is read from that catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from agent.auth.permissions import Permission
from agent.auth.roles import ROLES
from agent.control.catalogue import CATALOGUE, command_permission

__all__ = [
    "COMMAND_TYPE_PERMISSION",
    "ROLE_PERMISSIONS",
    "Permission",
    "allowed",
    "command_permission",
]


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

# Command types that need more than Permission.COMMAND (read from the catalogue).
COMMAND_TYPE_PERMISSION: Mapping[str, Permission] = MappingProxyType(
    {kind.value: spec.permission for kind, spec in CATALOGUE.items() if spec.permission is not Permission.COMMAND}
)


def allowed(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())
