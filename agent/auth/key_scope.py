"""What an API key may act as: at most what everyone who made it may, and nothing once one of them is gone.

A key is made by a user (a login session), by the command line, or (only in databases from
before that was refused) by another key. The rule, applied every time a key is looked up:

- every key in the chain (the key, the key that made it, ...) must be unrevoked;
- every user who made one of them must exist and be enabled;
- a key with no recorded maker must have been made on the command line (`cli:...`); the
  command line belongs to no user, so such a key keeps its own role;
- a chain that does not resolve (a maker missing, or longer than the store follows) is refused;
- the key acts with the lowest role found along the chain: its own, its makers' keys', and
  their users' current roles.

Failing any rule refuses the key as unknown (AUTH_INVALID): a client cannot tell a revoked key
from one whose creator left, and need not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.auth.roles import rank
from agent.store.api_keys import KeyLink

__all__ = ["KeyStanding", "standing"]


@dataclass(frozen=True)
class KeyStanding:
    """The verdict on one key: the role it acts with, or None and why not.

    `owner_ids` and `chain_ids` name every user and key the verdict rests on, so that a change
    to any of them can evict the cached verdict.
    """

    role: str | None
    reason: str
    owner_ids: frozenset[str]
    chain_ids: frozenset[str]

    @property
    def usable(self) -> bool:
        return self.role is not None


def standing(chain: Sequence[KeyLink]) -> KeyStanding:
    """Apply the rule above to `chain` (the key first, then its makers, as `chain_in` returns)."""
    owners = frozenset(link.record.created_by_user_id for link in chain if link.record.created_by_user_id)
    keys = frozenset(link.record.id for link in chain)

    def refuse(reason: str) -> KeyStanding:
        return KeyStanding(None, reason, owners, keys)

    if not chain:
        return refuse("unknown key")
    roles: list[str] = []
    for index, link in enumerate(chain):
        record = link.record
        if record.revoked:
            return refuse("revoked" if index == 0 else "made by a revoked key")
        if record.created_by_user_id is not None:
            if not link.owner_found or link.owner_role is None:
                return refuse("made by an unknown user")
            if link.owner_disabled:
                return refuse("made by a disabled user")
            roles.append(link.owner_role)
        if record.created_by_key_id is not None:
            following = chain[index + 1] if index + 1 < len(chain) else None
            if following is None or following.record.id != record.created_by_key_id:
                return refuse("made by a key that cannot be found")
        elif record.created_by_user_id is None and not record.created_by.startswith("cli:"):
            return refuse("made by nobody known")
        roles.append(record.role)
    return KeyStanding(min(roles, key=rank), "ok", owners, keys)
