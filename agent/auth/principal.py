"""Who is calling (`Principal`) and where from (`CallContext`): what every audit row needs."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ACTOR_MAX", "CallContext", "Principal", "cli_principal", "key_actor"]

# Every column that stores an actor (a command's `user`, `created_by`, `revoked_by`, ...) holds at
# most this much, the length of the longest user name.
ACTOR_MAX = 64


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    `actor` is what the audit log and the command records name: the user name for a session,
    `oak_<prefix>:<key name>` for an API key (see `key_actor`), `cli:<os user>` for the command
    line. Nothing parses it: what the code needs to know about the credential is in its own field
    (`key_prefix`, `key_id`, `user_id`, ...). `credential_digest`
    (the SHA-256 of the token or key, never the secret) lets a long-lived stream re-check that
    the credential is still valid; it is kept out of `repr` so it never lands in a log line.
    """

    actor: str
    role: str
    method: str  # "session" | "api_key" | "local"
    user_name: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    key_id: str | None = None
    key_prefix: str | None = None
    credential_digest: str | None = field(default=None, repr=False, compare=False)


@dataclass
class CallContext:
    """Per call: source address and request id for the audit row, and whether one was written.

    `audited` is set by the service when it committed an audit row for this call, so the HTTP
    layer writes its own row only for calls the service did not record (refusals, errors).
    """

    source_ip: str | None = None
    request_id: str | None = None
    audited: bool = False


def key_actor(prefix: str, name: str) -> str:
    """How an API key is named in the audit log and on the commands it submits.

    The public prefix (fixed length) comes first, so the key is identified by it whatever its
    name says: a key named "ada" or "cli:root" reads `oak_<prefix>:ada`, which no user (names
    have no ':') and no command line actor (`cli:...`) can be. The name is cut so the whole fits
    `ACTOR_MAX` (49 of its characters remain) and anything unprintable is replaced.
    """
    shown = "".join(ch if ch.isprintable() else "?" for ch in name)
    return f"oak_{prefix}:{shown}"[:ACTOR_MAX]


def cli_principal(os_user: str) -> Principal:
    """The command line acts as admin: whoever can run it owns the data directory anyway."""
    return Principal(actor=f"cli:{os_user}"[:64], role="admin", method="local")
