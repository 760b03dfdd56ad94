"""`oht-agent db check | backup DEST | restore SRC`."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parsers(sub: argparse._SubParsersAction, add_config: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    """Register the database subcommands (filled in with the store capability)."""


def dispatch(args: argparse.Namespace) -> int | None:
    return None
