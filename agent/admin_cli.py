"""Administration subcommands (`user ...`, `audit verify`), registered into the `oht-agent` parser."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the administration subcommands (filled in by the API capability)."""


def dispatch(args: argparse.Namespace) -> int | None:
    """Run an administration subcommand; None when `args.command` is not one of them."""
    return None
