"""The permission matrix: cumulative roles, E-stop for everyone, guarded command types."""

from __future__ import annotations

from itertools import pairwise

from agent.api.permissions import COMMAND_TYPE_PERMISSION, ROLE_PERMISSIONS, Permission, allowed, command_permission
from agent.auth.roles import ROLES


def test_roles_are_cumulative() -> None:
    for lower, higher in pairwise(ROLES):
        assert ROLE_PERMISSIONS[lower] < ROLE_PERMISSIONS[higher], (lower, higher)


def test_every_role_may_estop_and_read() -> None:
    for role in ROLES:
        assert allowed(role, Permission.ESTOP) and allowed(role, Permission.READ)


def test_who_may_do_what() -> None:
    expected = {
        Permission.COMMAND: {"operator", "technician", "admin"},
        Permission.FAULT_RESET: {"technician", "admin"},
        Permission.MAINTENANCE: {"technician", "admin"},
        Permission.USERS: {"admin"},
        Permission.API_KEYS: {"admin"},
        Permission.AUDIT: {"admin"},
        Permission.CONFIGURE: {"admin"},
    }
    for permission, roles in expected.items():
        assert {r for r in ROLES if allowed(r, permission)} == roles, permission
    assert not allowed("nobody", Permission.READ)


def test_guarded_command_types_need_a_technician() -> None:
    assert command_permission("module_reset") is Permission.MAINTENANCE
    assert command_permission("register_write") is Permission.MAINTENANCE
    assert command_permission("move") is Permission.COMMAND
    assert command_permission("pause") is Permission.COMMAND
    assert not allowed("operator", COMMAND_TYPE_PERMISSION["register_write"])
    assert allowed("technician", COMMAND_TYPE_PERMISSION["register_write"])
