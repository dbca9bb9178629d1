"""What the live event stream (`GET /api/v1/events`) lets through, and where it starts.

Pure decisions, kept apart from the JetStream subscription that feeds them.

- `task_id`: that task's events only.
- `serial`: events that name the device (its own device events, account events for it,
  task events carrying the serial), plus every later event of a task seen created,
  dispatched or started on it since the stream position the client started from.
- `type`: a prefix of the event type (`task.` or `task.completed`).

Most of the work is done by the subject, never by reading the event: the EVENTS
subject `evt.<kind>.<key>.<type>` carries the stream kind, its key (task id, serial,
username) and the event type. The subscription is narrowed to the smallest subject
that holds everything wanted (so NATS drops the rest before it reaches the gateway),
and `accepts` decides from the subject alone, except for the few event types that
tie a task or an account to a phone: only those are parsed, and only when a `serial`
filter asks. One client following a busy fleet costs a string split per event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import get_args

from pydantic import BaseModel

from fleet_api.errors import ApiError
from fleet_contracts.codes import ErrorCode
from fleet_contracts.events import AnyEvent
from fleet_contracts.subjects import token

_KINDS = ("task", "device", "account")


def _event_models() -> list[type[BaseModel]]:
    union = get_args(AnyEvent)[0]
    return [m for m in get_args(union) if isinstance(m, type) and issubclass(m, BaseModel)]


EVENT_TYPES: frozenset[str] = frozenset(m.model_fields["type"].default for m in _event_models())
# Task and account events whose body names the phone (`serial`): the only ones a serial
# filter has to read. Derived from the contracts, so a new event type is covered.
NAMES_A_PHONE: frozenset[str] = frozenset(
    m.model_fields["type"].default
    for m in _event_models()
    if "serial" in m.model_fields and not m.model_fields["type"].default.startswith("device.")
)


@dataclass(frozen=True)
class EventSubject:
    kind: str
    key: str
    type: str

    @classmethod
    def parse(cls, subject: str) -> EventSubject | None:
        parts = subject.split(".", 3)
        if len(parts) != 4 or parts[0] != "evt":
            return None
        return cls(kind=parts[1], key=parts[2], type=parts[3])


@dataclass
class FeedFilter:
    task_id: int | None = None
    serial: str | None = None
    type_prefix: str | None = None
    _tasks_on_serial: set[str] = field(default_factory=set)

    def subject(self) -> str:
        """The narrowest EVENTS subject that still carries everything `accepts` wants."""
        prefix = self.type_prefix or ""
        kind = prefix.split(".", 1)[0] if "." in prefix else ""
        exact = prefix if prefix in EVENT_TYPES else ">"
        if self.task_id is not None:
            return f"evt.task.{token(self.task_id)}.{exact}"
        if self.serial is not None and kind == "device":
            return f"evt.device.{token(self.serial)}.{exact}"
        if self.serial is None and kind in _KINDS:
            return f"evt.{kind}.*.{exact}" if exact != ">" else f"evt.{kind}.>"
        if kind in _KINDS:
            return f"evt.{kind}.>"
        return "evt.>"

    def accepts(self, subject: str, body: bytes) -> bool:
        """Whether the event published on `subject` goes to this client; `body` is read
        only for the event types that tie a task or an account to the filtered phone."""
        where = EventSubject.parse(subject)
        if where is None:
            return False
        if self.task_id is not None and (where.kind, where.key) != ("task", token(self.task_id)):
            return False
        # The phone first: a task is tied to it by events the type filter may not want.
        if self.serial is not None and not self._on_serial(where, body):
            return False
        return self.type_prefix is None or where.type.startswith(self.type_prefix)

    def _on_serial(self, where: EventSubject, body: bytes) -> bool:
        assert self.serial is not None
        if where.kind == "device":
            return where.key == token(self.serial)
        if where.kind == "task" and where.key in self._tasks_on_serial:
            return True
        if where.type not in NAMES_A_PHONE or _serial_of(body) != self.serial:
            return False
        if where.kind == "task":
            self._tasks_on_serial.add(where.key)
        return True


def _serial_of(body: bytes) -> str | None:
    try:
        data = json.loads(body).get("data") or {}
    except (ValueError, AttributeError):
        return None
    serial = data.get("serial") if isinstance(data, dict) else None
    return serial if isinstance(serial, str) else None


def type_of_subject(subject: str) -> str:
    where = EventSubject.parse(subject)
    return where.type if where else ""


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
