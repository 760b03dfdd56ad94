"""Crash-loop benchmark: 500 kill -9 cycles of the agent while commands stream in through the API.

Runs alone: `.venv/bin/python bench/crash.py [CYCLES]`; the last line printed is one JSON object.
Targets: 0 acknowledged commands lost, 0 executed twice (counted from the writes the simulator
received), quick_check clean after every kill. Baseline in the same run: the cycle time, to see
how much of it is the agent's start-up.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.system.crash_harness import run_crash_loop


def main(cycles: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="oht-bench-crash-") as tmp:
        report = run_crash_loop(Path(tmp), cycles=cycles, seed=42)
    out: dict[str, object] = {
        "bench": "crash",
        **report.summary(),
        "seconds_per_cycle": round(report.seconds / max(report.cycles, 1), 2),
    }
    out["targets_met"] = report.ok and report.cycles == cycles
    return out


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
    print(
        f"{result['cycles']} kill -9 cycles, {result['acknowledged']} commands acknowledged: "
        f"{result['lost']} lost, {result['executed_twice']} executed twice, "
        f"{result['quick_check_failures']} quick_check failures ({result['seconds_per_cycle']} s per cycle)"
    )
    print(json.dumps(result))
