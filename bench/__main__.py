"""`make bench`: every benchmark in one run; the table goes to bench/results/latest.md.

`python -m bench metrics-cost [--small]` runs only the end-to-end cost of metrics (off vs
on) and writes bench/results/metrics-cost.md.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import big_log, handover, metrics_cost, sessions, system, versus
from fleet_runtime.logs import configure


async def main() -> str:
    sections = []
    try:
        from bench import scheduler as scheduler_bench

        sections.append(system.table("Scheduler alone", await scheduler_bench.run()))
    except ImportError as exc:
        sections.append(f"## Scheduler alone\n\nnot run: {exc}\n")
    ours = await system.run()
    sections.append(system.table("Whole system", ours.rows))
    sections.append(
        system.table("Beside Celery + Redis, and two schedulers", await versus.run(ours))
    )
    sections.append(system.table("Lease handover", await handover.run()))
    sections.append(system.table("Device sessions", await sessions.run()))
    sections.append(system.table("Cost of metrics", await metrics_cost.run()))
    sections.append(await big_log.section())
    head = (
        f"# Benchmarks\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; made by `make bench`\n"
    )
    return "\n".join([head, *sections])


async def only_metrics_cost(small: bool) -> str:
    scale = metrics_cost.SMALL if small else metrics_cost.BIG
    command = "python -m bench metrics-cost" + (" --small" if small else "")
    head = (
        f"# Cost of metrics\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; `{command}`\n"
    )
    return "\n".join([head, system.table("End to end", await metrics_cost.run(scale))])


if __name__ == "__main__":
    # The in-process scheduler of the first scenario would log every command.
    configure("bench", "WARNING")
    args = sys.argv[1:]
    name = "latest.md"
    if args[:1] == ["metrics-cost"]:
        report = asyncio.run(only_metrics_cost("--small" in args))
        name = "metrics-cost.md"
    else:
        report = asyncio.run(main())
    print(report)
    out = Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")
