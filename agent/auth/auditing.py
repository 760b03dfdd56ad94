"""Writing audit rows for callers without credentials, through the `AuditGate`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import aiosqlite

from agent.auth.throttle import AuditGate
from agent.store.audit import AuditEntry, append_in
from agent.store.database import Database

__all__ = ["AUDIT_CODES", "SUPPRESSED", "write_anonymous"]

SUPPRESSED: Final = "AUDIT_SUPPRESSED"

# The codes of the audit rows written here rather than for a request (code -> what to check).
AUDIT_CODES: Mapping[str, str] = MappingProxyType(
    {
        SUPPRESSED: (
            "Anonymous requests from one address went over their audit budget and were counted, not"
            " recorded one by one: look for a client there that retries without credentials."
        ),
    }
)


async def write_anonymous(db: Database, gate: AuditGate, entry: AuditEntry) -> bool:
    """Append `entry` unless its address is over its budget; True when written.

    When rows of this address were suppressed before, an `audit.suppressed` row with their
    count goes first, in the same transaction.
    """
    ip = entry.source_ip or "unknown"
    admitted, suppressed = gate.admit(ip)
    if not admitted:
        return False
    rows = [entry]
    if suppressed:
        rows.insert(
            0,
            AuditEntry(
                actor="system",
                auth_method="none",
                action="audit.suppressed",
                result="denied",
                code=SUPPRESSED,
                target=f"{suppressed} refused anonymous requests from {ip} not recorded one by one",
                source_ip=entry.source_ip,
                request_id=entry.request_id,
            ),
        )

    async def unit(conn: aiosqlite.Connection) -> None:
        for row in rows:
            await append_in(conn, row)

    await db.write(unit)
    return True
