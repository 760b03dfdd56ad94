"""Reading and verifying the audit log (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from agent.api.context import api_context
from agent.api.deps import require
from agent.api.models import AUTH_ERRORS, AuditPage, AuditVerifyOut, errors
from agent.api.permissions import Permission

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
AUDIT = [Depends(require(Permission.AUDIT))]


@router.get("", response_model=AuditPage, dependencies=AUDIT, responses=errors(*AUTH_ERRORS))
async def list_audit(
    request: Request,
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Rows with seq > after_seq, oldest first; page with `next_after_seq`."""
    rows = await api_context(request).audit.list(after_seq, limit)
    return AuditPage(items=rows, next_after_seq=rows[-1].seq if rows else after_seq)


@router.get("/verify", response_model=AuditVerifyOut, dependencies=AUDIT, responses=errors(*AUTH_ERRORS))
async def verify_audit(request: Request) -> AuditVerifyOut:
    """Walk the hash chain; `ok` false names the first row that does not hold."""
    result = await api_context(request).audit.verify()
    return AuditVerifyOut(ok=result.ok, rows=result.rows, first_bad_seq=result.first_bad_seq, reason=result.reason)
