"""What the live event stream (`GET /api/v1/events`) lets through, and where it starts.

Pure decisions, kept apart from the JetStream subscription that feeds them.

- `task_id`: that task's events only.
- `serial`: events that name the device (its own device events, account events for it,
  task events carrying the serial), plus every later event of a task seen created,
  dispatched or started on it since the stream position the client started from.
- `type`: a prefix of the event type (`task.` or `task.completed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet_api.errors import ApiError
from fleet_contracts.codes import ErrorCode
from fleet_contracts.events import EventEnvelope
from fleet_contracts.subjects import token

_KINDS = ("task", "device", "account")


@dataclass
class FeedFilter:
    task_id: int | None = None
    serial: str | None = None
    type_prefix: str | None = None
    _tasks_on_serial: set[int] = field(default_factory=set)

    def subject(self) -> str:
        """The narrowest EVENTS subject that still carries everything `accepts` wants."""
        if self.task_id is not None:
            return f"evt.task.{token(self.task_id)}.>"
        kind = (self.type_prefix or "").split(".", 1)[0]
        if kind in _KINDS and self.type_prefix and "." in self.type_prefix:
            return f"evt.{kind}.>"
        return "evt.>"

    def accepts(self, envelope: EventEnvelope) -> bool:
        task_id = envelope.data.get("task_id")
        if self.task_id is not None and task_id != self.task_id:
            return False
        if self.serial is not None and not self._on_serial(envelope, task_id):
            return False
        return self.type_prefix is None or envelope.type.startswith(self.type_prefix)

    def _on_serial(self, envelope: EventEnvelope, task_id: object) -> bool:
        if envelope.data.get("serial") == self.serial:
            if isinstance(task_id, int):
                self._tasks_on_serial.add(task_id)
            return True
        return isinstance(task_id, int) and task_id in self._tasks_on_serial


def resume_after(header: str | None, last_event_id: int | None, since: int | None) -> int | None:
    """The last event id the client has seen, from `Last-Event-ID` or the query; None
    means live events only."""
    if header is not None and header.strip():
        try:
            value = int(header.strip())
        except ValueError:
            raise ApiError(
                ErrorCode.INVALID_PARAMETERS,
                f"Last-Event-ID: {header!r} is not an event id (a whole number)",
            ) from None
        if value < 0:
            raise ApiError(ErrorCode.INVALID_PARAMETERS, "Last-Event-ID: must be 0 or more")
        return value
    if last_event_id is not None:
        return last_event_id
    return since
