"""The late-report rule table, row by row, on the task aggregate alone (no I/O).

Each row: a task ended one way, then a report of kind started / progress / completed /
failed arrives for its run; the test checks the events the task emits and where it ends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet_contracts.events import (
    TaskCompleted,
    TaskFailed,
    TaskProgressed,
    TaskReportLate,
    TaskStarted,
)
from fleet_scheduler import late
from fleet_scheduler.late import RULES, Ending, Verdict
from fleet_scheduler.task import Task, TaskState

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RUN = "d-1"


def running() -> Task:
    task = Task(TaskState(id=7, serial="s1", state="pending", version=3))
    assert task.dispatch("a1", RUN, NOW + timedelta(seconds=30), "inc-1")
    task.started(RUN)
    return task


def ended(how: Ending) -> Task:
    """A task whose run `RUN` ended `how`; its events so far are cleared."""
    task = running()
    match how:
        case Ending.CURRENT:
            pass
        case Ending.COMPLETED:
            task.completed(RUN, {})
        case Ending.FAILED:
            task.failed(RUN, "caption box missing")
        case Ending.STOPPED:
            task.stop()
        case Ending.LOST:
            task.lost("agent lost: a1 sent no heartbeat for 31s")
        case Ending.DELETED:
            task.lost("agent lost: a1 restarted")
            task.delete()
        case Ending.RETRIED:
            task.failed(RUN, "caption box missing")
            task.retry(NOW)
            task.dispatch("a1", "d-2", NOW + timedelta(seconds=30), "inc-1")
    fresh = Task(task.state)
    return fresh


def report(task: Task, kind: str) -> None:
    match kind:
        case late.STARTED:
            task.started(RUN)
        case late.PROGRESS:
            task.progressed(RUN, "typing caption", 40, "")
        case late.COMPLETED:
            task.completed(RUN, {"posted": True})
        case late.FAILED:
            task.failed(RUN, "phone: upload failed")


EXPECTED: dict[Verdict, tuple[list[type], str | None]] = {
    Verdict.RECORD: ([TaskReportLate], None),
    Verdict.REOPEN: ([TaskReportLate, TaskStarted], "running"),
    Verdict.COMPLETE: ([TaskReportLate, TaskCompleted], "completed"),
    Verdict.FAIL: ([TaskReportLate, TaskFailed], "failed"),
}
"""verdict -> (events emitted, the task's state after; None: unchanged)."""

ROWS = [(how, kind) for how in Ending if how is not Ending.CURRENT for kind in late.REPORT_KINDS]


@pytest.mark.parametrize(("how", "kind"), ROWS, ids=[f"{h}-{k}" for h, k in ROWS])
def test_every_late_report_after_every_ending_follows_the_table(how: Ending, kind: str) -> None:
    task = ended(how)
    before = task.state
    assert late.ending(before, RUN) is how
    report(task, kind)
    verdict = RULES[how][kind]
    events, state_after = EXPECTED[verdict]
    if verdict is Verdict.REOPEN and kind == late.PROGRESS:
        events = [*events, TaskProgressed]
    assert [type(e) for e in task.pending] == events
    first = task.pending[0]
    assert isinstance(first, TaskReportLate)
    assert (first.report, first.ended_by, first.verdict) == (kind, how, verdict)
    assert task.state.state == (state_after or before.state)
    assert task.state.deleted == before.deleted


def test_the_table_has_a_verdict_for_every_ending_and_report() -> None:
    assert set(RULES) == set(Ending)
    for row in RULES.values():
        assert set(row) == set(late.REPORT_KINDS)


def test_reports_of_the_current_run_apply_without_a_late_record() -> None:
    task = Task(TaskState(id=7, serial="s1", state="pending", version=3))
    task.dispatch("a1", RUN, NOW, "inc-1")
    task.started(RUN)
    task.progressed(RUN, "upload", 80, "")
    task.completed(RUN, {})
    assert [type(e) for e in task.pending][1:] == [TaskStarted, TaskProgressed, TaskCompleted]
    assert task.state.state == "completed"


def test_lost_then_completed_tells_the_whole_story() -> None:
    task = running()
    task.lost("agent lost: a1 restarted")
    task.completed(RUN, {"posted": True})
    kinds = [type(e).__name__ for e in task.pending]
    assert kinds[-3:] == ["TaskFailed", "TaskReportLate", "TaskCompleted"]
    lost = task.pending[-3]
    assert isinstance(lost, TaskFailed) and lost.lost
    assert task.state.state == "completed" and task.state.ended_by == "completed"


def test_lost_then_failed_keeps_the_phones_reason() -> None:
    task = running()
    task.lost("agent a1 never confirmed start")
    task.failed(RUN, "phone: upload failed")
    last = task.pending[-1]
    assert isinstance(last, TaskFailed) and last.reason == "phone: upload failed"
    assert not last.lost and task.state.ended_by == "failed"
    # A second end report of that run changes nothing more.
    task.completed(RUN, {})
    assert isinstance(task.pending[-1], TaskReportLate)
    assert task.state.state == "failed"


def test_a_retried_task_not_yet_sent_again_only_records_its_old_runs_reports() -> None:
    task = running()
    task.failed(RUN, "caption box missing")
    task.retry(NOW)
    fresh = Task(task.state)
    assert late.ending(fresh.state, RUN) is Ending.RETRIED
    fresh.completed(RUN, {})
    assert [type(e) for e in fresh.pending] == [TaskReportLate]
    assert fresh.state.state == "pending"


def test_a_heartbeat_release_is_recorded_only_for_an_ended_task() -> None:
    task = running()
    before = len(task.pending)
    task.released(RUN, "agent a1 runs nothing of it")  # still running: nothing to free
    assert len(task.pending) == before
    task.lost("agent a1 never confirmed start")
    task.released(RUN, "agent a1 runs nothing of it")
    last = task.pending[-1]
    assert isinstance(last, TaskReportLate)
    assert (last.report, last.ended_by) == (late.HEARTBEAT, Ending.LOST)
