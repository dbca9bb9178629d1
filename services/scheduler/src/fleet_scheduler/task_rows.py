"""The task and device read-model rows, and how each task event changes them (pure).

`projections.project_all` loads every row a batch of events touches once, lets
`RowBatch.apply` play the events on them in log order, then writes the final rows
set-wise: a few statements per batch instead of two or three per event. Each rule of
the task read model (a run's end, a late report, a release of the phone) is written
once, here; the database only stores what it decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from fleet_contracts.codes import TaskStatus
from fleet_contracts.events import (
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskDispatched,
    TaskFailed,
    TaskMaterialsPicked,
    TaskProgressed,
    TaskReportLate,
    TaskRequeued,
    TaskRetried,
    TaskScheduled,
    TaskStarted,
    TaskStopped,
)
from fleet_scheduler import late
from fleet_scheduler.late import Verdict
from fleet_scheduler.store import RecordedEvent
from fleet_scheduler.task import STATE_FIELDS, TaskState

ROW_EVENTS = (
    TaskCreated,
    TaskMaterialsPicked,
    TaskScheduled,
    TaskDispatched,
    TaskStarted,
    TaskProgressed,
    TaskCompleted,
    TaskFailed,
    TaskReportLate,
    TaskStopped,
    TaskRequeued,
    TaskRetried,
    TaskDeleted,
)
RowEvent = (
    TaskCreated
    | TaskMaterialsPicked
    | TaskScheduled
    | TaskDispatched
    | TaskStarted
    | TaskProgressed
    | TaskCompleted
    | TaskFailed
    | TaskReportLate
    | TaskStopped
    | TaskRequeued
    | TaskRetried
    | TaskDeleted
)
ROW_EVENT_TYPES = frozenset(str(cls.model_fields["type"].default) for cls in ROW_EVENTS)
"""The event types applied here; every other type is projected by its own statement."""

DEVICE_EVENTS = (TaskDispatched, TaskCompleted, TaskFailed, TaskReportLate, TaskRequeued)
"""The task events that may hold or free a phone."""

ACTIVE = ("dispatched", "running")


@dataclass(slots=True)
class TaskRow:
    """A `tasks` row: the columns events change, then those only a creation sets."""

    id: int
    serial: str
    state: str
    status: int
    reason: str | None
    wait_reason: str
    retry_count: int
    due_at: datetime
    interval_anchor: int | None
    agent_id: str | None
    dispatch_id: str | None
    dispatched_at: datetime | None
    lease_until: datetime | None
    incarnation: str
    started_at: datetime | None
    finished_at: datetime | None
    progress: int | None
    ended_by: str | None
    unheld_since: datetime | None
    deleted: bool
    version: int
    reason_class: str | None
    retry_checked: bool
    auto_retries: int
    # Set once, by the creation.
    username: str | None = None
    script_name: str = ""
    script_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    min_interval: int = 0
    max_interval: int = 0
    start_time: str | None = None
    created_at: datetime | None = None
    correlation_id: str | None = None
    created_by: str | None = None
    group_name: str | None = None
    retry_policy: dict[str, Any] | None = None
    schedule_id: int | None = None
    batch_id: str | None = None


TASK_COLUMNS = tuple(f.name for f in fields(TaskRow))
CHANGED_COLUMNS = TASK_COLUMNS[: TASK_COLUMNS.index("auto_retries") + 1]
"""id, serial, then every column an event after the creation may change: what is
loaded of a row, and written back."""


def state_of(row: TaskRow) -> TaskState:
    """What the task aggregate decides on, from a whole row (`Held.whole`)."""
    return TaskState(**{name: getattr(row, name) for name in STATE_FIELDS})


@dataclass
class Held:
    """The task rows one transaction has locked or inserted, as its events leave them.

    Nobody else can change a row this transaction holds, and every change this
    transaction makes goes through `RowBatch` on these same objects, so they stay the
    rows' true state until commit: a second read of them is never needed. A writer that
    changes `tasks` in SQL behind them must `forget` them."""

    rows: dict[int, TaskRow] = field(default_factory=dict)
    partial: set[int] = field(default_factory=set)
    """Rows read with `CHANGED_COLUMNS` only (the projection's read): right for
    projecting, but their creation columns are unknown."""

    def whole(self, ids: list[int]) -> dict[int, TaskRow]:
        """The rows of `ids` held with every column."""
        return {
            i: row for i in ids if (row := self.rows.get(i)) is not None and i not in self.partial
        }

    def keep(self, rows: list[TaskRow], *, partial: bool) -> None:
        for row in rows:
            self.rows[row.id] = row
            if partial:
                self.partial.add(row.id)
            else:
                self.partial.discard(row.id)

    def forget(self) -> None:
        self.rows.clear()
        self.partial.clear()


@dataclass(slots=True)
class DeviceRow:
    serial: str
    busy: bool
    current_task_id: int | None
    last_task_id: int | None
    last_finished_at: datetime | None


DEVICE_COLUMNS = tuple(f.name for f in fields(DeviceRow))


def created_row(rec: RecordedEvent, e: TaskCreated) -> TaskRow:
    return TaskRow(
        id=e.task_id,
        serial=e.serial,
        state="pending",
        status=int(TaskStatus.PENDING),
        reason=None,
        wait_reason=e.wait_reason,
        retry_count=0,
        due_at=e.due_at,
        interval_anchor=None,
        agent_id=None,
        dispatch_id=None,
        dispatched_at=None,
        lease_until=None,
        incarnation="",
        started_at=None,
        finished_at=None,
        progress=None,
        ended_by=None,
        unheld_since=None,
        deleted=False,
        version=rec.version,
        reason_class=None,
        retry_checked=True,
        auto_retries=0,
        username=e.username,
        script_name=e.script_name,
        script_config=e.script_config,
        source=str(e.source),
        min_interval=e.min_interval,
        max_interval=e.max_interval,
        start_time=e.start_time,
        created_at=rec.recorded_at,
        correlation_id=rec.metadata.get("correlation_id"),
        created_by=e.created_by,
        group_name=e.group,
        retry_policy=e.retry_policy,
        schedule_id=e.schedule_id,
        batch_id=e.batch_id or None,
    )


@dataclass
class RowBatch:
    """The rows one run of task events touches, as loaded, then as the events leave them."""

    tasks: dict[int, TaskRow] = field(default_factory=dict)
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    created: dict[int, TaskRow] = field(default_factory=dict)
    """Rows to insert (made by a TaskCreated of this batch), by id, in creation order."""
    changed: set[int] = field(default_factory=set)
    """Loaded task rows to write back."""
    changed_devices: set[str] = field(default_factory=set)
    holding: dict[int, set[str]] = field(default_factory=dict)
    """task id -> the serials of the loaded devices whose current task it is."""
    started: dict[int, datetime] = field(default_factory=dict)
    """Tasks started here, by id: when (for the dispatch latency)."""

    def add_devices(self, rows: list[DeviceRow]) -> None:
        for d in rows:
            self.devices[d.serial] = d
            if d.current_task_id is not None:
                self.holding.setdefault(d.current_task_id, set()).add(d.serial)

    def _row(self, task_id: int) -> TaskRow | None:
        row = self.created.get(task_id)
        if row is not None:
            return row
        row = self.tasks.get(task_id)
        if row is not None:
            self.changed.add(task_id)
        return row

    def _hold(self, serial: str, task_id: int) -> None:
        device = self.devices.get(serial)
        if device is None:
            return
        if device.current_task_id is not None:
            self.holding.get(device.current_task_id, set()).discard(serial)
        device.busy = True
        device.current_task_id = task_id
        self.holding.setdefault(task_id, set()).add(serial)
        self.changed_devices.add(serial)

    def _free(self, task_id: int, finished_at: datetime | None) -> None:
        """Free the phones held for `task_id`; an end (`finished_at`) is remembered."""
        for serial in self.holding.pop(task_id, set()):
            device = self.devices[serial]
            device.busy = False
            device.current_task_id = None
            if finished_at is not None:
                device.last_task_id = task_id
                device.last_finished_at = finished_at
            self.changed_devices.add(serial)

    def apply(self, rec: RecordedEvent, event: RowEvent) -> None:
        if isinstance(event, TaskCreated):
            self.created[event.task_id] = created_row(rec, event)
            return
        task_id = event.task_id
        row = self._row(task_id)
        match event:
            case TaskDispatched():
                if row is not None:
                    row.state = "dispatched"
                    row.agent_id = event.agent_id
                    row.dispatch_id = event.dispatch_id
                    row.dispatched_at = rec.recorded_at
                    row.lease_until = event.lease_until
                    row.version = rec.version
                    row.incarnation = event.incarnation
                    row.ended_by = None
                    row.unheld_since = None
                self._hold(event.serial, task_id)
            case TaskCompleted():
                self._end(rec, row, task_id, event.dispatch_id, "completed", None)
            case TaskFailed():
                ended_by = "lost" if event.lost else "failed"
                self._end(rec, row, task_id, event.dispatch_id, ended_by, event.reason)
                # Only a failure that ended the task is classed and left to the retry policy.
                if (
                    row is not None
                    and row.state == "failed"
                    and row.finished_at == rec.recorded_at
                    and row.version == rec.version
                ):
                    row.reason_class = str(event.reason_class) if event.reason_class else None
                    row.retry_checked = False
            case TaskReportLate():
                self._late_report(rec, row, event)
            case TaskRequeued():
                if row is not None:
                    row.state = "pending"
                    row.due_at = event.due_at
                    row.wait_reason = event.reason
                    row.version = rec.version
                    row.ended_by = None
                self._free(task_id, None)
            case _ if row is None:
                return
            case TaskScheduled():
                row.due_at = event.due_at
                row.wait_reason = event.reason
                row.interval_anchor = event.after_task_id
                row.version = rec.version
            case TaskStarted():
                row.state = "running"
                row.status = int(TaskStatus.RUNNING)
                row.started_at = rec.recorded_at
                row.progress = 0
                row.version = rec.version
                row.ended_by = None
                row.unheld_since = None
            case TaskProgressed():
                if event.percent is not None:
                    row.progress = event.percent
                row.version = rec.version
            case TaskStopped():
                # The device stays busy until the agent says the script has ended.
                row.state = "failed"
                row.status = int(TaskStatus.FAILED)
                row.reason = event.reason
                row.finished_at = rec.recorded_at
                row.version = rec.version
                row.ended_by = "stopped"
            case TaskRetried():
                row.state = "pending"
                row.status = int(TaskStatus.PENDING)
                row.reason = None
                row.wait_reason = event.reason
                row.retry_count = event.retry_count
                row.due_at = event.due_at
                row.started_at = None
                row.finished_at = None
                row.progress = None
                row.version = rec.version
                row.ended_by = None
                row.retry_checked = True
                row.reason_class = None
                row.auto_retries = row.auto_retries + 1 if event.automatic else 0
            case TaskDeleted():
                if not row.deleted:
                    row.deleted = True
                    row.version = rec.version
            case TaskMaterialsPicked():
                # The pick lives in the task's config already; only its version moves.
                row.version = rec.version

    def _end(
        self,
        rec: RecordedEvent,
        row: TaskRow | None,
        task_id: int,
        dispatch_id: str,
        ended_by: str,
        reason: str | None,
    ) -> None:
        """A run ended. It ends the task when the task was on that run, or had been given
        up on as lost (or, for a completion, stopped): what the phone did wins (`late`)."""
        completed = ended_by == "completed"
        reopenable = ("lost", "stopped") if completed else ("lost",)
        if row is not None:
            takes = row.dispatch_id == dispatch_id and (
                row.state in ACTIVE
                or (row.state == "failed" and row.ended_by in reopenable and not row.deleted)
            )
            if takes:
                row.state = "completed" if completed else "failed"
                row.status = int(TaskStatus.COMPLETED if completed else TaskStatus.FAILED)
                row.reason = reason
                row.finished_at = rec.recorded_at
                if completed:
                    row.progress = 100
                row.ended_by = ended_by
            row.version = rec.version
        if ended_by != "lost":
            # A run given up on keeps its phone until the agent says the phone is free.
            self._free(task_id, rec.recorded_at)

    def _late_report(self, rec: RecordedEvent, row: TaskRow | None, event: TaskReportLate) -> None:
        """A run's report after its task moved on: the phone's state follows what the agent
        says (held again for a reopened run, free after an end); the task's own state is
        changed by the events that follow, if the rule says so."""
        if event.verdict == Verdict.REOPEN:
            if row is not None:
                row.ended_by = None
                row.finished_at = None
                row.reason = None
                row.unheld_since = None
                row.version = rec.version
                self._hold(row.serial, row.id)
            return
        if row is not None:
            row.version = rec.version
        # Not when the task is out on a newer run: that run holds the phone now.
        if event.report in (late.COMPLETED, late.FAILED, late.HEARTBEAT) and (
            row is None or row.state not in ACTIVE
        ):
            self._free(event.task_id, rec.recorded_at)
