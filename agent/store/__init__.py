"""SQLite storage of the agent: database, migrations, commands, outbox, backup and restore.

`database.py` opens and checks the database; `writer.py` is the write path (group commit):
acknowledged means committed.
"""

from agent.store.commands import CommandExpired, CommandRecord, Commands
from agent.store.database import DB_NAME, Database, StartupReport
from agent.store.errors import (
    CommandInvalid,
    CommandKeyConflict,
    CommandNotCancellable,
    CommandNotFound,
    CommandStateError,
    DataDirBusy,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from agent.store.lock import DataDirLock
from agent.store.outbox import AckResult, Outbox, OutboxRecord, StreamBacklog
from agent.store.transitions import TransitionRecord, record_transition

__all__ = [
    "DB_NAME",
    "AckResult",
    "CommandExpired",
    "CommandInvalid",
    "CommandKeyConflict",
    "CommandNotCancellable",
    "CommandNotFound",
    "CommandRecord",
    "CommandStateError",
    "Commands",
    "DataDirBusy",
    "DataDirLock",
    "Database",
    "Outbox",
    "OutboxRecord",
    "SchemaTooNew",
    "StartupReport",
    "StoreError",
    "StoreUnavailable",
    "StreamBacklog",
    "TransitionRecord",
    "record_transition",
]
