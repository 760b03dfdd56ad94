"""`oht-agent db check | backup DEST | backups | restore SRC`: the store's maintenance commands.

`check`, `backup` and `backups` work while the daemon runs; `restore` needs it stopped (the
data-directory lock says so). Each prints one JSON object on success, or the error code, message
and hint. `backups` lists the backups the core takes by itself before it migrates the database,
which are the way back to the previous release (docs/upgrade.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from oht_errors import CodedError

ROLLBACK_HELP = """\
rolling back an upgrade (docs/upgrade.md):
  A new release migrates the database forward when its core starts, and first backs it up into
  data_dir/backups/agent-v<from>-to-v<to>-<UTC time>.db (only the newest few are kept). The
  previous release refuses the migrated database (STORE_SCHEMA_NEWER). To go back to it:
    1. systemctl stop oht-agent.target
    2. install the previous release
    3. oht-agent db backups --config PATH     (pick the newest backup whose from_version is this
                                               release's schema_version)
    4. oht-agent db restore BACKUP --config PATH
    5. systemctl start oht-agent.target
  What was written after the upgrade is not in that backup; the replaced database is kept as
  data_dir/agent.db.before-restore-<id>.
"""


def add_parsers(sub: argparse._SubParsersAction, add_config: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    db = sub.add_parser(
        "db",
        help="database maintenance: check, backup, backups, restore",
        description="Check, back up and restore the agent's database (data_dir/agent.db).",
        epilog=ROLLBACK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    check = db_sub.add_parser(
        "check", help="quick_check, schema version, row counts, outbox backlog per stream (safe while running)"
    )
    add_config(check)
    backup = db_sub.add_parser("backup", help="consistent online copy to DEST (safe while running)")
    backup.add_argument("dest", metavar="DEST", help="file to write (must not exist)")
    add_config(backup)
    backups = db_sub.add_parser(
        "backups",
        help="list the backups taken before schema migrations, newest first (safe while running)",
        description="List the backups the core took by itself before it migrated the database to a newer\n"
        "schema (data_dir/backups), newest first, with the schema versions from and to.",
        epilog=ROLLBACK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(backups)
    restore = db_sub.add_parser(
        "restore",
        help="replace the database with SRC (stop the daemon first)",
        description="Replace data_dir/agent.db with the backup SRC; the current database is kept beside it\n"
        "as agent.db.before-restore-<id>. Refuses while the daemon runs (DATA_DIR_LOCKED), and refuses\n"
        "a backup with a newer schema than this release knows (STORE_SCHEMA_NEWER).",
        epilog=ROLLBACK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument(
        "src", metavar="SRC", help="a backup made by `oht-agent db backup`, or one listed by `oht-agent db backups`"
    )
    add_config(restore)


def dispatch(args: argparse.Namespace) -> int | None:
    if getattr(args, "command", None) != "db":
        return None
    from agent.config import load_config, resolve_path
    from agent.store import backup

    try:
        cfg = load_config(resolve_path(args.config))
        if args.db_command == "check":
            result = backup.check(cfg.data_path)
        elif args.db_command == "backup":
            result = backup.backup(cfg.data_path, args.dest)
        elif args.db_command == "backups":
            result = backup.list_backups(cfg.data_path)
        else:
            result = backup.restore(cfg.data_path, args.src)
    except CodedError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("ok", True) else 1
