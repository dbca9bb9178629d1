"""Domain events: the facts appended to the log, and the envelope they travel in.

An event's `data` is stored as JSON in the events table under its `type`; the relay
wraps each appended row in an `EventEnvelope` and publishes it to EVENTS with
`Nats-Msg-Id` = its global position.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from fleet_contracts.codes import TaskSource
from fleet_contracts.failures import FailureClass, classify
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
    group: str | None = Field(None, description="the device group the create targeted")
    retry_policy: dict[str, Any] | None = Field(
        None, description="the create's own automatic retry policy (None: the fleet's)"
    )
    schedule_id: int | None = Field(None, description="the schedule whose fire made it")


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
    incarnation: str = Field("", description="the agent process the run is addressed to")


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
    lost: bool = Field(
        False, description="the scheduler gave up on the run; the phone may still end it"
    )
    reason_class: FailureClass | None = Field(
        None, description="derived from reason when not given (events recorded before it)"
    )

    @model_validator(mode="before")
    @classmethod
    def _classify(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("reason_class") is None and "reason" in data:
            return {**data, "reason_class": classify(str(data["reason"]))}
        return data


class TaskReportLate(DomainEvent):
    """An agent's report that came after the task had ended or moved on, and what the
    scheduler's rule (scheduler README, "Late reports") made of it."""

    type: Literal["task.report_late"] = "task.report_late"
    task_id: int
    dispatch_id: str = ""
    report: str = Field(description="the report's type, e.g. task.completed")
    ended_by: str = Field(description="how the task had ended: completed, failed, stopped, ...")
    verdict: str = Field(description="what the report did: recorded only, reopened, ...")


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
    automatic: bool = Field(False, description="decided by the retry policy, not an operator")
    reason: str = Field("", description="why it waits until due_at (automatic back-off)")


class TaskDeleted(DomainEvent):
    type: Literal["task.deleted"] = "task.deleted"
    task_id: int


class TaskMaterialsPicked(DomainEvent):
    """The library items one task publishes, resolved once at create (see `materials`)."""

    type: Literal["task.materials_picked"] = "task.materials_picked"
    task_id: int
    materials: list[dict[str, Any]] = Field(
        default_factory=list, description="[{id, sha256, name, size, kind, ref}] in order"
    )
    tags: list[str] = Field(default_factory=list, description="the tags picked by, if any")


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


# Group events: stream id `group-<id>`
class GroupCreated(DomainEvent):
    type: Literal["group.created"] = "group.created"
    group_id: int
    name: str


class GroupRenamed(DomainEvent):
    type: Literal["group.renamed"] = "group.renamed"
    group_id: int
    name: str


class GroupDeleted(DomainEvent):
    type: Literal["group.deleted"] = "group.deleted"
    group_id: int


class GroupDevicesAdded(DomainEvent):
    type: Literal["group.devices_added"] = "group.devices_added"
    group_id: int
    serials: list[str]


class GroupDevicesRemoved(DomainEvent):
    type: Literal["group.devices_removed"] = "group.devices_removed"
    group_id: int
    serials: list[str]


# Schedule events: stream id `schedule-<id>`
class ScheduleDefined(DomainEvent):
    """Created or replaced: `spec` is the whole ScheduleRequest."""

    type: Literal["schedule.defined"] = "schedule.defined"
    schedule_id: int
    spec: dict[str, Any]
    defined_at: datetime = Field(description="fires are counted from here (or the last fire)")


class ScheduleDeleted(DomainEvent):
    type: Literal["schedule.deleted"] = "schedule.deleted"
    schedule_id: int


class ScheduleFired(DomainEvent):
    """One fire, recorded once: (schedule_id, fire_at) is its identity."""

    type: Literal["schedule.fired"] = "schedule.fired"
    schedule_id: int
    fire_at: datetime
    task_ids: list[int] = Field(default_factory=list)
    skipped: str = Field("", description="why no tasks were made ('' when they were)")
    missed: int = Field(0, description="older fires missed while down, not taken")


# Webhook events: stream id `webhook-<id>` (the secret is never in the log)
class WebhookRegistered(DomainEvent):
    type: Literal["webhook.registered"] = "webhook.registered"
    hook_id: int
    url: str
    event_types: list[str]
    description: str = ""


class WebhookDeleted(DomainEvent):
    type: Literal["webhook.deleted"] = "webhook.deleted"
    hook_id: int


# Leases: stream id `lease-<lease_id>` (never the session id, which is the secret)
class LeaseGranted(DomainEvent):
    """A phone lent to a program; `task_id` set when the lease was made for a task's
    custom script (it then lives as long as that dispatch, not by TTL)."""

    type: Literal["lease.granted"] = "lease.granted"
    lease_id: str
    serial: str
    agent_id: str | None = None
    label: str = ""
    ttl_secs: int | None = None
    expires_at: datetime | None = None
    task_id: int | None = None
    dispatch_id: str | None = None
    actor: str = "local"


class LeaseRenewed(DomainEvent):
    type: Literal["lease.renewed"] = "lease.renewed"
    lease_id: str
    serial: str
    ttl_secs: int
    expires_at: datetime
    actor: str = "local"


class LeaseReleased(DomainEvent):
    type: Literal["lease.released"] = "lease.released"
    lease_id: str
    serial: str
    reason: str = "released"
    actor: str = "local"


class LeaseExpired(DomainEvent):
    """Not renewed in time: decided on the database's clock by a scheduler."""

    type: Literal["lease.expired"] = "lease.expired"
    lease_id: str
    serial: str
    expired_at: datetime
    actor: str = "scheduler"


# Custom scripts: stream id `script-<name>`; per-host settings: `host-<agent_id>`
class CustomScriptRegistered(DomainEvent):
    type: Literal["script.registered"] = "script.registered"
    name: str
    command: list[str]
    platform: str = "generic"
    timeout_secs: int = 1800
    hosts: list[str] = Field(default_factory=list)
    description: str = ""
    actor: str = "local"


class CustomScriptRemoved(DomainEvent):
    type: Literal["script.removed"] = "script.removed"
    name: str
    actor: str = "local"


class HostAdbSet(DomainEvent):
    """adb passthrough turned on or off for one agent's phones (admin only)."""

    type: Literal["host.adb_set"] = "host.adb_set"
    agent_id: str
    enabled: bool
    actor: str = "local"


# Material events: stream id `material-<id>`
class MaterialAdded(DomainEvent):
    type: Literal["material.added"] = "material.added"
    material_id: int
    sha256: str
    name: str
    size: int
    kind: str
    content_type: str
    tags: list[str] = Field(default_factory=list)


class MaterialTagged(DomainEvent):
    """The item's tag set replaced (PATCH), or grown by a duplicate upload."""

    type: Literal["material.tagged"] = "material.tagged"
    material_id: int
    tags: list[str]


class MaterialDeleted(DomainEvent):
    type: Literal["material.deleted"] = "material.deleted"
    material_id: int
    sha256: str


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
    | TaskReportLate
    | DeviceConnected
    | DeviceDisconnected
    | AccountsReported
    | AccountRegistered
    | AccountRemoved
    | GroupCreated
    | GroupRenamed
    | GroupDeleted
    | GroupDevicesAdded
    | GroupDevicesRemoved
    | ScheduleDefined
    | ScheduleDeleted
    | ScheduleFired
    | WebhookRegistered
    | WebhookDeleted
    | LeaseGranted
    | LeaseRenewed
    | LeaseReleased
    | LeaseExpired
    | CustomScriptRegistered
    | CustomScriptRemoved
    | HostAdbSet
    | TaskMaterialsPicked
    | MaterialAdded
    | MaterialTagged
    | MaterialDeleted,
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


def envelope_json(
    *,
    position: int,
    stream_id: str,
    version: int,
    event_type: str,
    data_json: str,
    recorded_at: datetime,
    correlation_id: str,
    causation_id: str | None,
) -> bytes:
    """The `EventEnvelope` of a log row as JSON (what `to_bytes` writes, its `data` as the
    row holds it), built from the row's own JSON text: the relay publishes every event,
    and parsing each one's data into objects only to serialize it again was most of the
    relay's own work."""
    to_json = pydantic_core.to_json
    at = to_json(recorded_at)
    number = str(position).encode()
    return b"".join(
        (
            b'{"schema_version":1,"message_id":"',
            number,
            b'","correlation_id":',
            to_json(correlation_id),
            b',"causation_id":',
            to_json(causation_id),
            b',"occurred_at":',
            at,
            b',"position":',
            number,
            b',"stream_id":',
            to_json(stream_id),
            b',"version":',
            str(version).encode(),
            b',"type":',
            to_json(event_type),
            b',"data":',
            data_json.encode(),
            b',"recorded_at":',
            at,
            b"}",
        )
    )
