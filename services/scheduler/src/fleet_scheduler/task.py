"""The task aggregate: a small class whose methods decide, emit events and apply them.

State is loaded from the task read model (a snapshot kept in the same transaction as
the log), and new events are appended with the loaded version as the expected one, so
two schedulers deciding on one task at once cannot both succeed. The same state can be
rebuilt from the task's own events (`Task.from_events`): the read model is a snapshot
of it, not a second source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from fleet_contracts.codes import ErrorCode, TaskStatus
from fleet_contracts.events import (
    DomainEvent,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskDispatched,
    TaskFailed,
    TaskProgressed,
    TaskReportLate,
    TaskRequeued,
    TaskRetried,
    TaskScheduled,
    TaskStarted,
    TaskStopped,
)
from fleet_scheduler import late
from fleet_scheduler.errors import Rejected
from fleet_scheduler.late import Verdict

ACTIVE = ("dispatched", "running")
STATUS_OF_STATE = {
    "pending": TaskStatus.PENDING,
    "dispatched": TaskStatus.PENDING,
    "running": TaskStatus.RUNNING,
    "completed": TaskStatus.COMPLETED,
    "failed": TaskStatus.FAILED,
}


@dataclass(frozen=True)
class TaskState:
    id: int
    serial: str
    state: str
    version: int
    script_name: str = "post"
    script_config: dict[str, Any] = field(default_factory=dict)
    username: str | None = None
    agent_id: str | None = None
    dispatch_id: str | None = None
    retry_count: int = 0
    deleted: bool = False
    correlation_id: str | None = None
    ended_by: str | None = None
    """completed, failed (as the phone said), lost (the scheduler gave up) or stopped."""

    @property
    def status(self) -> TaskStatus:
        return STATUS_OF_STATE[self.state]


STATE_FIELDS = tuple(f.name for f in fields(TaskState))
"""The read model's columns a task's state is made of (`tasks` has them by these names)."""


@dataclass(frozen=True)
class StopOnAgent:
    """After commit: ask the agent running this task to stop it."""

    agent_id: str
    task_id: int
    dispatch_id: str


class Task:
    def __init__(self, state: TaskState) -> None:
        self.state = state
        self.loaded_version = state.version
        self.pending: list[DomainEvent] = []
        self.effects: list[StopOnAgent] = []

    @classmethod
    def from_events(cls, events: Iterable[DomainEvent], correlation_id: str | None = None) -> Task:
        """The task as its stream leaves it (the first event is its creation); the
        correlation id is the creating request's, kept in the log's metadata."""
        task = cls(TaskState(id=0, serial="", state="pending", version=0))
        for event in events:
            task.apply(event)
        task.state = replace(task.state, correlation_id=correlation_id)
        task.loaded_version = task.state.version
        return task

    @property
    def id(self) -> int:
        return self.state.id

    def _emit(self, event: DomainEvent) -> None:
        self.pending.append(event)
        self.apply(event)

    def apply(self, event: DomainEvent) -> None:
        s = self.state
        # One `replace` per event, version included: it is most of what applying costs.
        changes: dict[str, Any]
        match event:
            case TaskCreated():
                self.state = TaskState(
                    id=event.task_id,
                    serial=event.serial,
                    state="pending",
                    version=s.version + 1,
                    script_name=event.script_name,
                    script_config=event.script_config,
                    username=event.username,
                )
                return
            case TaskDispatched():
                changes = {
                    "state": "dispatched",
                    "agent_id": event.agent_id,
                    "dispatch_id": event.dispatch_id,
                }
            case TaskStarted():
                changes = {"state": "running", "ended_by": None}
            case TaskCompleted():
                changes = {"state": "completed", "ended_by": "completed"}
            case TaskFailed():
                changes = {"state": "failed", "ended_by": "lost" if event.lost else "failed"}
            case TaskStopped():
                changes = {"state": "failed", "ended_by": "stopped"}
            case TaskRequeued():
                changes = {"state": "pending", "ended_by": None}
            case TaskRetried():
                changes = {"state": "pending", "retry_count": event.retry_count, "ended_by": None}
            case TaskDeleted():
                changes = {"deleted": True}
            case _:
                changes = {}
        self.state = replace(s, version=s.version + 1, **changes)

    def _wrong_state(self, allowed: str) -> Rejected:
        return Rejected(
            ErrorCode.WRONG_STATE,
            f"task {self.id} is {self.state.status.name.lower()}; {allowed}",
        )

    # Operator commands
    def stop(self) -> None:
        if self.state.state in ("completed", "failed"):
            raise self._wrong_state("only pending or running tasks can be stopped")
        was = self.state
        self._emit(TaskStopped(task_id=self.id))
        if was.state in ACTIVE and was.agent_id and was.dispatch_id:
            self.effects.append(StopOnAgent(was.agent_id, self.id, was.dispatch_id))

    def delete(self) -> None:
        if self.state.state not in ("completed", "failed"):
            self.stop()
        self._emit(TaskDeleted(task_id=self.id))

    def retry(self, now: datetime) -> None:
        if self.state.state != "failed":
            raise self._wrong_state("only failed tasks can be retried")
        self._emit(TaskRetried(task_id=self.id, retry_count=self.state.retry_count + 1, due_at=now))

    def auto_retry(self, due_at: datetime, reason: str) -> None:
        """The retry policy's decision (see retry_policy.py): a new attempt after a pause."""
        if self.state.state != "failed" or self.state.deleted:
            return
        self._emit(
            TaskRetried(
                task_id=self.id,
                retry_count=self.state.retry_count + 1,
                due_at=due_at,
                automatic=True,
                reason=reason,
            )
        )

    # Dispatch
    def schedule(self, due_at: datetime, reason: str, after_task_id: int | None) -> None:
        if self.state.state == "pending":
            self._emit(
                TaskScheduled(
                    task_id=self.id, due_at=due_at, reason=reason, after_task_id=after_task_id
                )
            )

    def dispatch(
        self, agent_id: str, dispatch_id: str, lease_until: datetime, incarnation: str = ""
    ) -> bool:
        if self.state.state != "pending" or self.state.deleted:
            return False
        self._emit(
            TaskDispatched(
                task_id=self.id,
                serial=self.state.serial,
                agent_id=agent_id,
                dispatch_id=dispatch_id,
                lease_until=lease_until,
                incarnation=incarnation,
            )
        )
        return True

    def requeue(self, dispatch_id: str, reason: str, due_at: datetime) -> None:
        if self.state.state == "dispatched" and self.state.dispatch_id == dispatch_id:
            self._emit(
                TaskRequeued(task_id=self.id, dispatch_id=dispatch_id, reason=reason, due_at=due_at)
            )

    # What the agent reports: the rule table in `late` decides what a report of a run
    # that is no longer the task's current, active one does.
    def _judge(self, report: str, dispatch_id: str) -> Verdict:
        end, verdict = late.judge(self.state, report, dispatch_id)
        if verdict is not Verdict.APPLY:
            self._emit(
                TaskReportLate(
                    task_id=self.id,
                    dispatch_id=dispatch_id,
                    report=report,
                    ended_by=end,
                    verdict=verdict,
                )
            )
        return verdict

    def _start(self, dispatch_id: str) -> None:
        self._emit(
            TaskStarted(
                task_id=self.id,
                serial=self.state.serial,
                agent_id=self.state.agent_id or "",
                dispatch_id=dispatch_id,
            )
        )

    def started(self, dispatch_id: str) -> None:
        verdict = self._judge(late.STARTED, dispatch_id)
        if verdict is Verdict.REOPEN or (
            verdict is Verdict.APPLY and self.state.state == "dispatched"
        ):
            self._start(dispatch_id)

    def progressed(self, dispatch_id: str, step: str, percent: int | None, message: str) -> None:
        verdict = self._judge(late.PROGRESS, dispatch_id)
        if verdict is Verdict.REOPEN or (
            verdict is Verdict.APPLY and self.state.state == "dispatched"
        ):
            self._start(dispatch_id)  # the start report was lost or is behind
        if self.state.state == "running" and verdict in (Verdict.APPLY, Verdict.REOPEN):
            self._emit(
                TaskProgressed(
                    task_id=self.id,
                    dispatch_id=dispatch_id,
                    step=step,
                    percent=percent,
                    message=message,
                )
            )

    def completed(self, dispatch_id: str, result: dict[str, Any]) -> None:
        if self._judge(late.COMPLETED, dispatch_id) in (Verdict.APPLY, Verdict.COMPLETE):
            self._emit(TaskCompleted(task_id=self.id, dispatch_id=dispatch_id, result=result))

    def failed(self, dispatch_id: str, reason: str, screenshot: str | None = None) -> None:
        if self._judge(late.FAILED, dispatch_id) in (Verdict.APPLY, Verdict.FAIL):
            self._emit(
                TaskFailed(
                    task_id=self.id, dispatch_id=dispatch_id, reason=reason, screenshot=screenshot
                )
            )

    def released(self, dispatch_id: str, why: str) -> None:
        """The agent holds no run on the phone this ended task kept busy: it is free."""
        if self.state.state not in ACTIVE:
            self._emit(
                TaskReportLate(
                    task_id=self.id,
                    dispatch_id=dispatch_id,
                    report=late.HEARTBEAT,
                    ended_by=late.ending(self.state, dispatch_id),
                    verdict=why,
                )
            )

    def lost(self, reason: str) -> None:
        """The scheduler gives up on an active run (agent lost, start never confirmed).

        The phone may still end the run; its report then wins (see `late`)."""
        if self.state.state in ACTIVE:
            self._emit(
                TaskFailed(
                    task_id=self.id,
                    dispatch_id=self.state.dispatch_id or "",
                    reason=reason,
                    lost=True,
                )
            )
