"""Writing audit rows for callers without credentials, through the `AuditGate`."""

from __future__ import annotations

import aiosqlite

from agent.auth.throttle import AuditGate
from agent.store.audit import AuditEntry, append_in
from agent.store.database import Database

__all__ = ["write_anonymous"]


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
                code="AUDIT_SUPPRESSED",
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
