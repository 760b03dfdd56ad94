"""The controller's records of faults go to the critical alarms stream, other events to events."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from agent.control.controller import Controller, outbox_kind
from agent.store.database import Database
from agent.store.outbox import Outbox


async def test_faults_are_alarms_and_other_events_are_events(tmp_path: Path) -> None:
    """The controller writes its fault records into the critical alarms stream."""
    raised = {"event": "fault_raised", "code": "ESTOP", "level": "estop"}
    cleared = {"event": "fault_cleared", "code": "ESTOP"}
    notice = {"event": "mode_changed", "code": None}
    assert [outbox_kind(e) for e in (raised, cleared, notice)] == ["alarm", "alarm", "event"]
    db = await Database.open(tmp_path)
    try:
        await Controller._write_records(SimpleNamespace(db=db), [], [raised, cleared, notice])  # type: ignore[arg-type]
        box = Outbox(db)
        assert [r.payload["event"] for r in await box.batch("alarms")] == ["fault_raised", "fault_cleared"]
        assert [r.payload["event"] for r in await box.batch("events")] == ["mode_changed"]
    finally:
        await db.close()
