"""Who is calling (`Principal`) and where from (`CallContext`): what every audit row needs."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CallContext", "Principal", "cli_principal"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    `actor` is what the audit log and the command records name: the user name for a session,
    `oak_<prefix>` for an API key, `cli:<os user>` for the command line. `credential_digest`
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


def cli_principal(os_user: str) -> Principal:
    """The command line acts as admin: whoever can run it owns the data directory anyway."""
    return Principal(actor=f"cli:{os_user}"[:64], role="admin", method="local")
