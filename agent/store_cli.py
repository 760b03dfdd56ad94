"""`oht-agent db check | backup DEST | restore SRC`: the store's maintenance commands.

`check` and `backup` work while the daemon runs; `restore` needs it stopped (the data-directory
lock says so). Each prints one JSON object on success, or the error code, message and hint.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from oht_errors import CodedError


def add_parsers(sub: argparse._SubParsersAction, add_config: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database maintenance: check, backup, restore")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    check = db_sub.add_parser(
        "check", help="quick_check, schema version, row counts, outbox backlog per stream (safe while running)"
    )
    add_config(check)
    backup = db_sub.add_parser("backup", help="consistent online copy to DEST (safe while running)")
    backup.add_argument("dest", metavar="DEST", help="file to write (must not exist)")
    add_config(backup)
    restore = db_sub.add_parser("restore", help="replace the database with SRC (stop the daemon first)")
    restore.add_argument("src", metavar="SRC", help="a backup made by `oht-agent db backup`")
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
        else:
            result = backup.restore(cfg.data_path, args.src)
    except CodedError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("ok", True) else 1
