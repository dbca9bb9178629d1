"""Domain events: the facts appended to the log, and the envelope they travel in.

An event's `data` is stored as JSON in the events table under its `type`; the relay
wraps each appended row in an `EventEnvelope` and publishes it to EVENTS with
`Nats-Msg-Id` = its global position.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fleet_contracts.codes import TaskSource
from fleet_contracts.messages import Message


class DomainEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# Task events: stream id `task-<id>`
class TaskCreated(DomainEvent):
    type: Literal["task.created"] = "task.created"
    task_id: int
    serial: str
    username: str | None = None
    script_name: str
    script_config: dict[str, Any]
    source: TaskSource = TaskSource.API
    min_interval: int = 0
    max_interval: int = 0
    start_time: str | None = None
    due_at: datetime
    wait_reason: str = ""
    batch_id: str = Field("", description="the create command's id: tasks made together")
    created_by: str | None = Field(
        None, description="the API key (actor) whose create made it; its plan's device limit"
    )


class TaskScheduled(DomainEvent):
    """The task's due time was (re)decided: start_time, an interval, a retry."""

    type: Literal["task.scheduled"] = "task.scheduled"
    task_id: int
    due_at: datetime
    reason: str
    after_task_id: int | None = Field(
        None, description="the device's previous task this interval is counted from"
    )


class TaskDispatched(DomainEvent):
    type: Literal["task.dispatched"] = "task.dispatched"
    task_id: int
    serial: str
    agent_id: str
    dispatch_id: str
    lease_until: datetime


class TaskStarted(DomainEvent):
    type: Literal["task.started"] = "task.started"
    task_id: int
    serial: str
    agent_id: str
    dispatch_id: str


class TaskProgressed(DomainEvent):
    type: Literal["task.progressed"] = "task.progressed"
    task_id: int
    dispatch_id: str = ""
    step: str
    percent: int | None = None
    message: str = ""


class TaskCompleted(DomainEvent):
    type: Literal["task.completed"] = "task.completed"
    task_id: int
    dispatch_id: str = ""
    result: dict[str, Any] = Field(default_factory=dict)


class TaskFailed(DomainEvent):
    type: Literal["task.failed"] = "task.failed"
    task_id: int
    dispatch_id: str = ""
    reason: str
    screenshot: str | None = None


class TaskStopped(DomainEvent):
    """Stopped by an operator; the task ends failed with reason `stopped`."""

    type: Literal["task.stopped"] = "task.stopped"
    task_id: int
    reason: str = "stopped"


class TaskRequeued(DomainEvent):
    """A dispatch did not take (agent refused, device busy); the task waits again."""

    type: Literal["task.requeued"] = "task.requeued"
    task_id: int
    dispatch_id: str = ""
    reason: str
    due_at: datetime


class TaskRetried(DomainEvent):
    type: Literal["task.retried"] = "task.retried"
    task_id: int
    retry_count: int
    due_at: datetime


class TaskDeleted(DomainEvent):
    type: Literal["task.deleted"] = "task.deleted"
    task_id: int


# Device events: stream id `device-<serial>`
class DeviceConnected(DomainEvent):
    type: Literal["device.connected"] = "device.connected"
    serial: str
    agent_id: str
    host: str
    model: str | None = None
    android_version: str | None = None
    battery: int | None = None


class DeviceDisconnected(DomainEvent):
    type: Literal["device.disconnected"] = "device.disconnected"
    serial: str
    agent_id: str
    reason: str = "unplugged"


class AccountsReported(DomainEvent):
    """The accounts an agent found signed in on one device."""

    type: Literal["device.accounts_reported"] = "device.accounts_reported"
    serial: str
    agent_id: str
    accounts: list[dict[str, str]] = Field(
        default_factory=list, description="[{username, platform}]"
    )


# Account events: stream id `account-<username>`
class AccountRegistered(DomainEvent):
    type: Literal["account.registered"] = "account.registered"
    username: str
    platform: str = "tiktok"
    serial: str


class AccountRemoved(DomainEvent):
    type: Literal["account.removed"] = "account.removed"
    username: str


AnyEvent = Annotated[
    TaskCreated
    | TaskScheduled
    | TaskDispatched
    | TaskStarted
    | TaskProgressed
    | TaskCompleted
    | TaskFailed
    | TaskStopped
    | TaskRequeued
    | TaskRetried
    | TaskDeleted
    | DeviceConnected
    | DeviceDisconnected
    | AccountsReported
    | AccountRegistered
    | AccountRemoved,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(event_type: str, data: dict[str, Any]) -> AnyEvent:
    return EVENT_ADAPTER.validate_python({**data, "type": event_type})


class EventEnvelope(Message):
    """One appended event as published on EVENTS (`message_id` = str(position))."""

    position: int
    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime

    def event(self) -> AnyEvent:
        return parse_event(self.type, self.data)
