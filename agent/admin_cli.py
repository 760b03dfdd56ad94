"""Administration subcommands: `user ...`, `audit verify`, `tls fingerprint`.

The first admin can only be made here: there is no default password and no self-registration.
User commands write the database, so they take the data directory lock: stop the daemon first
(`systemctl stop oht-agent.target`; the gateway caches sessions and users, so a change behind
its back would not reach it); they refuse with DATA_DIR_LOCKED otherwise. `user unlock` is the
exception: it works beside the running daemon, which reads it from the audit log. `audit verify`
and `tls fingerprint` only read and also work while the daemon runs.

Every change made here is audited like one made over the API, with the actor `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hmac
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.config import Config, load_config, resolve_path
from oht_errors import CodedError

__all__ = ["add_parsers", "dispatch"]

T = TypeVar("T")
_COMMANDS = ("user", "audit", "tls")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="PATH", help="configuration file (default: $OHT_AGENT_CONFIG or config/agent.toml)"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the administration subcommands."""
    from agent.auth.roles import ROLES

    user = sub.add_parser("user", help="manage API users (stop the daemon first; unlock works while it runs)")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION")
    user_sub.required = True
    add = user_sub.add_parser("add", help="create a user (the first admin is made this way)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead of prompting")
    _add_config(add)
    lst = user_sub.add_parser("list", help="list users")
    _add_config(lst)
    passwd = user_sub.add_parser("passwd", help="set a user's password (their sessions end)")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead of prompting"
    )
    _add_config(passwd)
    disable = user_sub.add_parser("disable", help="disable a user (never deleted; their sessions end)")
    disable.add_argument("name")
    _add_config(disable)
    unlock = user_sub.add_parser(
        "unlock",
        help="clear a user's failed logins so they can log in at once (works while the daemon runs)",
        description="Clear the failed-login count and delays of an account, from every address. Run it on the "
        "carriage when someone else's guessing keeps the owner waiting; the running gateway applies it at the "
        "account's next login (within a second). Audited as auth.unlock.",
    )
    unlock.add_argument("name")
    _add_config(unlock)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    audit_sub.required = True
    verify = audit_sub.add_parser("verify", help="check the audit hash chain: exit 0, or 1 with the first bad row")
    _add_config(verify)

    tls = sub.add_parser("tls", help="TLS tools")
    tls_sub = tls.add_subparsers(dest="tls_command", metavar="ACTION")
    tls_sub.required = True
    fp = tls_sub.add_parser("fingerprint", help="print the SHA-256 fingerprint of the device certificate")
    _add_config(fp)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run an administration subcommand; None when `args.command` is not one of them."""
    if args.command not in _COMMANDS:
        return None
    try:
        cfg = load_config(resolve_path(args.config))
        if args.command == "user":
            return _user(args, cfg)
        if args.command == "audit":
            return asyncio.run(_audit_verify(cfg.data_path))
        return _tls_fingerprint(cfg)
    except CodedError as exc:
        _print_error(exc)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _print_error(exc: CodedError) -> None:
    print(f"{exc.code}: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


# ---------------------------------------------------------------------- passwords


def _read_password(from_stdin: bool, name: str) -> str:
    """The new password: all of stdin (one trailing newline removed), or prompted twice."""
    from agent.auth.errors import PasswordRejected
    from agent.auth.passwords import check_policy

    if from_stdin:
        password = sys.stdin.read()
        if password.endswith("\n"):
            password = password[:-1]
        if password.endswith("\r"):
            password = password[:-1]
    else:
        password = getpass.getpass(f"new password for {name}: ")
        again = getpass.getpass("repeat it: ")
        if not hmac.compare_digest(password.encode(), again.encode()):
            raise PasswordRejected("the two passwords differ", hint="Type the same password twice.")
    check_policy(password, user_name=name)
    return password


# ---------------------------------------------------------------------- users


def _user(args: argparse.Namespace, cfg: Config) -> int:
    action = args.user_command
    password = None
    if action in ("add", "passwd"):
        password = _read_password(args.password_stdin, args.name)
    return asyncio.run(_user_async(action, args, cfg, password))


async def _with_service(cfg: Config, fn: Callable[[Any, Any, Any], Awaitable[T]], *, attach: bool = False) -> T:
    """Run `fn(service, principal, context)` on the data directory.

    `attach`: beside a running daemon (no lock, the schema must be current); only for changes the
    gateway picks up by itself (an unlock is read from the audit log)."""
    from agent.auth.principal import CallContext, cli_principal
    from agent.auth.service import AuthService
    from agent.store.database import Database

    db = await Database.open(cfg.data_path, attach=attach)
    try:
        service = AuthService(db)
        return await fn(service, cli_principal(getpass.getuser()), CallContext(source_ip="local"))
    finally:
        await db.close()


async def _user_async(action: str, args: argparse.Namespace, cfg: Config, password: str | None) -> int:
    if action == "add":
        assert password is not None
        user = await _with_service(cfg, lambda s, p, c: s.create_user(p, args.name, args.role, password, c))
        print(f"created user {user.name} with role {user.role}")
        return 0
    if action == "passwd":
        assert password is not None
        revoked = await _with_service(cfg, lambda s, p, c: s.set_password(p, args.name, password, c))
        print(f"password of {args.name} set; {revoked} session(s) ended")
        return 0
    if action == "disable":
        user = await _with_service(cfg, lambda s, p, c: s.disable_user(p, args.name, c))
        print(f"user {user.name} disabled")
        return 0
    if action == "unlock":
        user = await _with_service(cfg, lambda s, p, c: s.unlock(p, args.name, c), attach=True)
        print(f"failed logins of {user.name} cleared; the running agent applies it at the next login")
        return 0
    users = await _with_service(cfg, lambda s, p, c: s.list_users())
    if not users:
        print("no users yet: create the first admin with `oht-agent user add NAME --role admin`")
        return 0
    print(f"{'NAME':<24} {'ROLE':<11} {'STATE':<9} {'CREATED':<28} LAST LOGIN")
    for u in users:
        state = "disabled" if u.disabled else "active"
        print(f"{u.name:<24} {u.role:<11} {state:<9} {u.created_at:<28} {u.last_login_at or '-'}")
    return 0


# ---------------------------------------------------------------------- audit, tls


async def _audit_verify(data_dir: Path) -> int:
    """Verify on a connection of its own: works next to a running daemon (WAL readers)."""
    import sqlite3

    import aiosqlite

    from agent.store import chain_key
    from agent.store.audit import verify_connection
    from agent.store.database import DB_NAME

    path = data_dir / DB_NAME
    if not path.exists():
        print(f"AUDIT_NO_DATABASE: {path} does not exist", file=sys.stderr)
        return 1
    key = chain_key.load(data_dir)  # raises STORE_AUDIT_KEY_INVALID / _UNREADABLE with a hint
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA query_only = ON")
        await conn.execute("BEGIN")
        try:
            result = await verify_connection(conn, key)
        except sqlite3.Error as exc:
            print(f"AUDIT_UNREADABLE: {exc}", file=sys.stderr)
            print(
                "hint: is this database from an agent version with an audit log? Start the agent once to migrate it.",
                file=sys.stderr,
            )
            return 1
        finally:
            await conn.execute("ROLLBACK")
    finally:
        await conn.close()
    if result.ok:
        if key is None:
            keyed = "no audit key (the core makes it at its first start)"
        elif key.from_seq > 1:
            keyed = f"keyed from row {key.from_seq}; rows before it are plain SHA-256 (written before the key existed)"
        else:
            keyed = "every row keyed"
        print(f"audit log ok: {result.rows} rows, chain intact, {keyed}")
        return 0
    print(f"AUDIT_CHAIN_BROKEN: first bad row {result.first_bad_seq}: {result.reason}", file=sys.stderr)
    hint = f"rows before {result.first_bad_seq} verified ({result.rows}); compare with the copy shipped upstream"
    if key is None:
        hint += "; audit.key is missing from the data directory: restore it from the backup taken with the database"
    print(f"hint: {hint}.", file=sys.stderr)
    return 1


def _tls_fingerprint(cfg: Config) -> int:
    from agent.api.tls import is_loopback, read_fingerprint

    fingerprint = read_fingerprint(cfg.data_path)
    if fingerprint is None:
        if is_loopback(cfg.api.host):
            print(
                f"no device certificate: the API on {cfg.api.host} is loopback-only and serves plain HTTP",
                file=sys.stderr,
            )
        else:
            print("no device certificate yet: it is generated at the agent's first start", file=sys.stderr)
        return 1
    print(f"SHA256 Fingerprint={fingerprint}")
    return 0
