"""Where a batch of tasks stands, from the task events that concern it: pure
bookkeeping for `fleet task create --wait`, fed events in stream order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PENDING, RUNNING, COMPLETED, FAILED = 0, 1, 2, 3
STATUS_NAMES = {PENDING: "pending", RUNNING: "running", COMPLETED: "completed", FAILED: "failed"}
# What each event says about its task's status; events not listed leave it alone.
STATUS_AFTER = {
    "task.started": RUNNING,
    "task.completed": COMPLETED,
    "task.failed": FAILED,
    "task.stopped": FAILED,
    "task.retried": PENDING,
    "task.requeued": PENDING,
}


@dataclass
class Batch:
    statuses: dict[int, int]
    reasons: dict[int, str] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, task_ids: Iterable[int]) -> Batch:
        return cls(statuses=dict.fromkeys(task_ids, PENDING))

    def seed(self, task_id: int, status: int, reason: str | None) -> None:
        """A task's status as read from the API (before or between events)."""
        if task_id in self.statuses:
            self.statuses[task_id] = status
            if reason:
                self.reasons[task_id] = reason

    def apply(self, event_type: str, data: dict[str, Any]) -> bool:
        """Take one event in; True when it concerned this batch."""
        task_id = data.get("task_id")
        if not isinstance(task_id, int) or task_id not in self.statuses:
            return False
        if event_type == "task.deleted":
            self.deleted.add(task_id)
            self.statuses[task_id] = FAILED
            self.reasons[task_id] = "deleted"
            return True
        status = STATUS_AFTER.get(event_type)
        if status is None:
            return False
        self.statuses[task_id] = status
        if status == FAILED:
            self.reasons[task_id] = str(data.get("reason") or "failed")
        else:
            self.reasons.pop(task_id, None)
        return True

    def count(self, status: int) -> int:
        return sum(1 for s in self.statuses.values() if s == status)

    @property
    def finished(self) -> int:
        return self.count(COMPLETED) + self.count(FAILED)

    @property
    def done(self) -> bool:
        return self.finished == len(self.statuses)

    def failed(self) -> dict[int, str]:
        return {
            task_id: self.reasons.get(task_id, "failed")
            for task_id, status in sorted(self.statuses.items())
            if status == FAILED
        }
