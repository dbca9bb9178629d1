"""The pure decisions: start_time occurrences, intervals, which task a device runs next."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet_scheduler.schedule import (
    Candidate,
    Dispatch,
    Reschedule,
    Slot,
    decide,
    initial_due,
    next_occurrence,
)

UTCZ = ZoneInfo("UTC")
NOW = datetime(2026, 3, 2, 9, 0, 30, tzinfo=UTC)


def test_start_time_later_today_waits_with_reason() -> None:
    due, reason = initial_due("09:30", NOW, UTCZ)
    assert due == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert reason == "start_time 09:30 UTC"


def test_start_time_earlier_today_is_tomorrow() -> None:
    due, _ = initial_due("08:59", NOW, UTCZ)
    assert due == datetime(2026, 3, 3, 8, 59, tzinfo=UTC)


def test_start_time_equal_to_now_is_due_now() -> None:
    assert initial_due("09:00", NOW, UTCZ) == (NOW, "")
    assert initial_due(None, NOW, UTCZ) == (NOW, "")


def test_start_time_is_read_in_the_configured_zone() -> None:
    paris = ZoneInfo("Europe/Paris")  # UTC+1 in March before the switch
    due = next_occurrence("11:00", NOW, paris)
    assert due == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    _, reason = initial_due("11:00", NOW, paris)
    assert reason == "start_time 11:00 Europe/Paris"


def test_idle_device_runs_its_oldest_due_task_only() -> None:
    slots = [Slot("s1", "a1"), Slot("s2", "a1")]
    cands = [
        Candidate(3, "s1", NOW - timedelta(minutes=1)),
        Candidate(2, "s1", NOW - timedelta(minutes=5)),
        Candidate(1, "s1", NOW + timedelta(minutes=5)),  # not due yet
        Candidate(4, "s3", NOW),  # device not idle
    ]
    assert decide(slots, cands, NOW, random.Random(1)) == [Dispatch(2, "s1", "a1")]


def test_interval_pushes_next_task_after_previous_finish() -> None:
    finished = NOW - timedelta(minutes=2)
    slot = Slot("s1", "a1", last_task_id=17, last_finished_at=finished)
    cand = Candidate(18, "s1", NOW - timedelta(hours=1), min_interval=10, max_interval=20)
    decisions = decide([slot], [cand], NOW, random.Random(3))
    assert len(decisions) == 1
    resched = decisions[0]
    assert isinstance(resched, Reschedule)
    pause = resched.due_at - finished
    assert timedelta(minutes=10) <= pause <= timedelta(minutes=20)
    assert resched.after_task_id == 17
    assert resched.reason.startswith("interval ") and resched.reason.endswith(" after task 17")
    # Same seed, same pause: the draw comes from the given random source only.
    again = decide([slot], [cand], NOW, random.Random(3))
    assert again == decisions


def test_interval_already_elapsed_dispatches_at_once() -> None:
    slot = Slot("s1", "a1", last_task_id=17, last_finished_at=NOW - timedelta(hours=2))
    cand = Candidate(18, "s1", NOW, min_interval=1, max_interval=5)
    decisions = decide([slot], [cand], NOW, random.Random(3))
    assert isinstance(decisions[0], Reschedule)
    assert decisions[1] == Dispatch(18, "s1", "a1")


def test_interval_drawn_once_per_previous_task() -> None:
    slot = Slot("s1", "a1", last_task_id=17, last_finished_at=NOW - timedelta(minutes=30))
    cand = Candidate(18, "s1", NOW, min_interval=5, max_interval=5, interval_anchor=17)
    assert decide([slot], [cand], NOW, random.Random(3)) == [Dispatch(18, "s1", "a1")]
