"""CPU time of process trees read from /proc (Linux), for the per-task CPU rows."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from bench.cputime import StatTimes, parse_stat, trees_ticks

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def snapshot(proc: Path = Path("/proc")) -> dict[int, StatTimes]:
    """Every live process's times; a process ending mid-read is skipped."""
    stats: dict[int, StatTimes] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return stats


def ticks(groups: Mapping[str, Iterable[int]]) -> dict[str, int]:
    """CPU ticks spent so far by each named group of process trees, from one snapshot
    (reaped children included)."""
    stats = snapshot()
    return {name: trees_ticks(roots, stats) for name, roots in groups.items()}
