"""Child process for test_store_crash.py: submit commands until killed.

    python tests/system/store_crash_child.py DATA_DIR [SUBMITTERS]

Prints "READY" once the database is open, then, from SUBMITTERS concurrent tasks, the id of
every command *after* `Commands.submit` returned for it (that is, after its COMMIT). One line
is one write() of far less than PIPE_BUF bytes, so a kill -9 never leaves half a line.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.store.commands import Commands
from agent.store.database import Database


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


async def main(data_dir: Path, submitters: int) -> None:
    db = await Database.open(data_dir)
    commands = Commands(db)
    say(f"READY {db.report}")

    async def submitter(n: int) -> None:
        i = 0
        while True:
            record, _ = await commands.submit(
                "api", f"{os.getpid()}-{n}-{i}", "move", {"n": n, "i": i, "pad": "x" * 200}, user="crash"
            )
            say(record.id)
            i += 1

    await asyncio.gather(*(submitter(n) for n in range(submitters)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 8))
