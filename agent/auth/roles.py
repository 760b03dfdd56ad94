"""The four roles, ordered: each one can do everything the one before it can.

The permissions of each role live in `agent.api.permissions` (the one matrix); this module only
names the roles and their order, so that the store and the CLI can validate a role without
importing the HTTP layer.
"""

from __future__ import annotations

from typing import Literal, get_args

from agent.auth.errors import RoleInvalid

__all__ = ["ROLES", "RoleName", "check_role", "rank"]

# The one declaration of the role names: the API's schema (a closed enum), the CLI and the store
# read it from here. The users and api_keys tables repeat the list in a CHECK written by a past
# migration; a test compares that list with this one.
RoleName = Literal["viewer", "operator", "technician", "admin"]
ROLES: tuple[str, ...] = get_args(RoleName)
_RANK = {role: index for index, role in enumerate(ROLES)}


def check_role(role: object) -> str:
    """Return `role` if it names a role, else raise RoleInvalid."""
    if not isinstance(role, str) or role not in _RANK:
        raise RoleInvalid(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


def rank(role: str) -> int:
    """Position in the hierarchy (viewer 0 ... admin 3); raises RoleInvalid for unknown roles."""
    return _RANK[check_role(role)]
