"""CPU time per task, from samples of /proc/<pid>/stat: the arithmetic alone, no I/O.

A process tree's CPU time is its root's own time (`utime + stime`), the time of the
children it has reaped (`cutime + cstime`: PostgreSQL's backends that ended), and the
same for each live child. Sampled before and after a flood, the difference is what the
whole tree spent on it, however many backends came and went in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StatTimes:
    """The fields of one /proc/<pid>/stat line that CPU accounting needs, in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int


def parse_stat(line: str) -> StatTimes:
    """One /proc/<pid>/stat line; the command name may hold spaces and parentheses, so
    the fields are counted from its closing parenthesis."""
    head, _, tail = line.rpartition(")")
    pid = int(head.split("(", 1)[0])
    # tail starts at field 3 (state); see proc(5): ppid is 4, utime..cstime are 14..17.
    fields = tail.split()
    return StatTimes(
        pid=pid,
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def tree_ticks(root: int, stats: Mapping[int, StatTimes]) -> int:
    """Ticks spent by `root`, the children it reaped and every live descendant; 0 for a
    process that is gone."""
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        s = stats[pid]
        total += s.utime + s.stime + s.cutime + s.cstime
        todo += children.get(pid, [])
    return total


def trees_ticks(roots: Iterable[int], stats: Mapping[int, StatTimes]) -> int:
    """The ticks of several trees; a process under two roots counts once."""
    return sum(tree_ticks(r, stats) for r in _outermost(set(roots), stats))


def _outermost(roots: set[int], stats: Mapping[int, StatTimes]) -> set[int]:
    def has_root_ancestor(pid: int) -> bool:
        seen: set[int] = set()
        parent = stats[pid].ppid if pid in stats else 0
        while parent in stats and parent not in seen:
            if parent in roots:
                return True
            seen.add(parent)
            parent = stats[parent].ppid
        return False

    return {r for r in roots if not has_root_ancestor(r)}


def spent_seconds(before: int, after: int, ticks_per_second: int) -> float:
    """CPU seconds between two tick counts of the same processes."""
    return (after - before) / ticks_per_second


def per_task(seconds: float, tasks: int) -> float:
    """`seconds` shared between `tasks` tasks."""
    if tasks <= 0:
        raise ValueError("no tasks to share the time between")
    return seconds / tasks


def ratio(ours: float, theirs: float) -> float:
    """`ours / theirs`; infinite when theirs is zero and ours is not."""
    if theirs == 0:
        return float("inf") if ours else 1.0
    return ours / theirs


def times(value: float) -> str:
    """A ratio as people read it: `3.20 x`."""
    return f"{value:.2f} x"
