"""`oht-agent upstream pubkey`: the robot's device public key, for the centre to pin.

The key pair is made here if the robot has none yet, so a robot can be enrolled before its
link is configured (docs/upstream.md, enrolment). Run it as the gateway's account, which signs
with the key (docs/systemd.md shows how): a key made by root would be unreadable to the gateway.
The key goes to stdout alone, ready for a file or a pipe; what it is, and whether it was made
now, goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from oht_errors import CodedError

__all__ = ["add_parsers", "dispatch"]


def add_parsers(sub: argparse._SubParsersAction, add_config: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    upstream = sub.add_parser("upstream", help="upstream link tools: the device key to pin centrally")
    upstream_sub = upstream.add_subparsers(dest="upstream_command", metavar="ACTION")
    upstream_sub.required = True
    pubkey = upstream_sub.add_parser(
        "pubkey",
        help="print the device public key (made now if there is none); run as the gateway's account",
        description="Print the Ed25519 public key that signs this robot's records, for the centre to pin. "
        "The key pair (device.key in the data directory) is made if it does not exist yet; it is never "
        "replaced. The fingerprint on stderr is what to compare with the centre's copy.",
    )
    pubkey.add_argument(
        "--format", choices=("pem", "base64"), default="pem",
        help="pem: a PUBLIC KEY block (default); base64: the 32 raw bytes, as central_public_key takes them",
    )  # fmt: skip
    add_config(pubkey)


def dispatch(args: argparse.Namespace) -> int | None:
    if getattr(args, "command", None) != "upstream":
        return None
    from agent.config import load_config, resolve_path
    from agent.sync import identity

    try:
        cfg = load_config(resolve_path(args.config))
        device, made = identity.load_or_create(cfg.data_path)
    except CodedError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    public = device.public
    print(public.pem().rstrip("\n") if args.format == "pem" else public.base64())
    state = "made now" if made else "existing"
    print(f"device key of agent {cfg.agent.id} ({state}), SHA-256 {public.fingerprint()}", file=sys.stderr)
    return 0
