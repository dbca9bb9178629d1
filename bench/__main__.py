"""`make bench`: every benchmark in one run; the table goes to bench/results/latest.md."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import sessions, system
from fleet_runtime.logs import configure


async def main() -> str:
    sections = []
    try:
        from bench import scheduler as scheduler_bench

        sections.append(system.table("Scheduler alone", await scheduler_bench.run()))
    except ImportError as exc:
        sections.append(f"## Scheduler alone\n\nnot run: {exc}\n")
    sections.append(system.table("Whole system", (await system.run()).rows))
    sections.append(system.table("Device sessions", await sessions.run()))
    head = (
        f"# Benchmarks\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}\n"
    )
    return "\n".join([head, *sections])


if __name__ == "__main__":
    # The in-process scheduler of the first scenario would log every command.
    configure("bench", "WARNING")
    report = asyncio.run(main())
    print(report)
    out = Path(__file__).parent / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")
