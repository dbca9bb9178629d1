"""The rule for a report that arrives after its task ended or moved on (pure, no I/O).

An agent reports what its phone did; by the time the report is read the task may have
ended another way (the scheduler gave up on the run, an operator stopped, deleted or
retried it). Such a report is never dropped silently: `judge` says what it does, and
the task's history records it (`task.report_late`). The table is written out in the
scheduler README ("Late reports"); `RULES` below is that table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet_scheduler.task import TaskState

ACTIVE = ("dispatched", "running")


class Ending(StrEnum):
    """How a task stopped being the run a report speaks of."""

    CURRENT = "current"
    """Not ended: the report is about the task's current run."""
    COMPLETED = "completed"
    FAILED = "failed"
    """Failed as the phone reported."""
    STOPPED = "stopped"
    LOST = "lost"
    """Failed by the scheduler giving up on the run (agent restarted, silent, never
    confirmed the start, phone unplugged, run no longer held): the phone may still end it."""
    DELETED = "deleted"
    RETRIED = "retried"
    """The report names an older run than the task's current one (retried, requeued)."""


class Verdict(StrEnum):
    APPLY = "applied"
    RECORD = "recorded only"
    REOPEN = "the phone is running it: task running again"
    COMPLETE = "the phone finished it: task completed"
    FAIL = "the phone ended it: task failed with the phone's reason"


STARTED = "task.started"
PROGRESS = "task.progress"
COMPLETED = "task.completed"
FAILED = "task.failed"
HEARTBEAT = "heartbeat"
"""Not a report kind in the table: a heartbeat saying the phone no longer runs the task."""
REPORT_KINDS = (STARTED, PROGRESS, COMPLETED, FAILED)

RULES: dict[Ending, dict[str, Verdict]] = {
    Ending.CURRENT: dict.fromkeys(REPORT_KINDS, Verdict.APPLY),
    Ending.COMPLETED: dict.fromkeys(REPORT_KINDS, Verdict.RECORD),
    Ending.FAILED: dict.fromkeys(REPORT_KINDS, Verdict.RECORD),
    # The operator asked for a stop; a script that finished anyway did post.
    Ending.STOPPED: {
        STARTED: Verdict.RECORD,
        PROGRESS: Verdict.RECORD,
        COMPLETED: Verdict.COMPLETE,
        FAILED: Verdict.RECORD,
    },
    # The scheduler's guess was wrong: what the phone says wins.
    Ending.LOST: {
        STARTED: Verdict.REOPEN,
        PROGRESS: Verdict.REOPEN,
        COMPLETED: Verdict.COMPLETE,
        FAILED: Verdict.FAIL,
    },
    Ending.DELETED: dict.fromkeys(REPORT_KINDS, Verdict.RECORD),
    Ending.RETRIED: dict.fromkeys(REPORT_KINDS, Verdict.RECORD),
}
"""ending -> report kind -> verdict. Whatever the verdict, an end report (completed,
failed) of the run a phone is held for frees that phone: the agent says it is free."""


def ending(state: TaskState, dispatch_id: str) -> Ending:
    """How the task stands towards the run `dispatch_id` names."""
    if not dispatch_id or dispatch_id != state.dispatch_id:
        return Ending.RETRIED
    if state.deleted:
        return Ending.DELETED
    if state.state in ACTIVE:
        return Ending.CURRENT
    if state.state == "completed":
        return Ending.COMPLETED
    if state.state == "failed":
        if state.ended_by == "lost":
            return Ending.LOST
        if state.ended_by == "stopped":
            return Ending.STOPPED
        return Ending.FAILED
    return Ending.RETRIED  # pending again on the same run id: retried, not yet sent


def judge(state: TaskState, report: str, dispatch_id: str) -> tuple[Ending, Verdict]:
    """What a report of kind `report` (a `REPORT_KINDS` value) about run `dispatch_id`
    does to the task in `state`."""
    end = ending(state, dispatch_id)
    return end, RULES[end][report]
