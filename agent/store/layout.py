"""Names of the store's files in the data directory, in one place.

Why a module of its own: the database (database.py) takes a backup before it migrates, and the
backup code (backup.py) needs the database's file name, so neither can own the name without an
import cycle.
"""

from __future__ import annotations

__all__ = ["BACKUPS_DIR", "DB_NAME"]

DB_NAME = "agent.db"
# The backups the store takes by itself before a schema migration (backup.py, `upgrade_backup`).
BACKUPS_DIR = "backups"
