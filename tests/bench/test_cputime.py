"""The CPU arithmetic of the benchmarks: /proc stat lines, process trees, per-task
seconds and ratios."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import proc
from bench.cputime import (
    StatTimes,
    parse_stat,
    per_task,
    ratio,
    spent_seconds,
    times,
    tree_ticks,
    trees_ticks,
)

# A real line's shape; the name holds a space and a parenthesis, as a process may set.
LINE = (
    "4242 (postgres: a) b) S 4000 4242 4242 0 -1 4194560 5000 12 0 0 "
    "731 269 55 45 20 0 1 0 123456 200000000 3000 18446744073709551615"
)


def st(pid: int, ppid: int, u: int, s: int = 0, cu: int = 0, cs: int = 0) -> StatTimes:
    return StatTimes(pid=pid, ppid=ppid, utime=u, stime=s, cutime=cu, cstime=cs)


def test_parse_stat_counts_fields_after_the_name() -> None:
    assert parse_stat(LINE) == StatTimes(
        pid=4242, ppid=4000, utime=731, stime=269, cutime=55, cstime=45
    )


def test_tree_sums_the_root_its_reaped_children_and_live_descendants() -> None:
    stats = {
        1: st(1, 0, 1000),  # not ours
        10: st(10, 1, 5, 1, cu=30, cs=10),  # postmaster: ended backends in cutime/cstime
        11: st(11, 10, 7, 3),  # live backend
        12: st(12, 11, 2),  # its child
        20: st(20, 1, 100),  # a stranger
    }
    assert tree_ticks(10, stats) == 5 + 1 + 30 + 10 + 7 + 3 + 2
    assert tree_ticks(99, stats) == 0


def test_a_backend_ending_between_samples_keeps_its_time() -> None:
    before = {10: st(10, 1, 5, cu=0), 11: st(11, 10, 40)}
    after = {10: st(10, 1, 6, cu=45)}  # backend 11 spent 5 more ticks, then was reaped
    assert tree_ticks(10, after) - tree_ticks(10, before) == 1 + 5


def test_a_process_under_two_roots_counts_once() -> None:
    stats = {10: st(10, 1, 5), 11: st(11, 10, 7), 30: st(30, 1, 1)}
    assert trees_ticks([10, 11, 30], stats) == 5 + 7 + 1


def test_seconds_per_task_and_ratios() -> None:
    assert spent_seconds(100, 300, 100) == pytest.approx(2.0)
    assert per_task(2.0, 1000) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="no tasks"):
        per_task(1.0, 0)
    assert ratio(900.0, 300.0) == pytest.approx(3.0)
    assert ratio(1.0, 0.0) == float("inf")
    assert times(3.0) == "3.00 x"


def test_ticks_follow_a_busy_child_of_this_process() -> None:
    """Read from the real /proc: a child that burns CPU and is reaped stays counted."""
    me = os.getpid()
    before = proc.ticks({"me": [me]})["me"]
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass",
        ],
        check=True,
    )
    after = proc.ticks({"me": [me]})["me"]
    assert (after - before) / proc.TICKS_PER_SECOND >= 0.25
