"""NATS subjects, headers, streams and KV buckets: the bus's address book.

Streams
- COMMANDS (`cmd.>`): REST commands from the gateway, consumed by the schedulers
  through one shared durable consumer.
- EVENTS (`evt.>`): every event appended to the log, published by the scheduler's relay
  with `Nats-Msg-Id` = the event's global position. Ops and the SSE endpoint read it.
- REPORTS (`report.>`): what agents saw (devices, accounts, task progress), consumed by
  the schedulers, which turn it into events.

Core NATS (not persisted): `query.*` request/reply to the schedulers (queue group
`schedulers`), `agent.<id>.run` / `agent.<id>.stop` requests to one agent, and
`heartbeat.<agent_id>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HDR_MSG_ID = "Nats-Msg-Id"
HDR_REPLY_TO = "Fleet-Reply-To"
HDR_CORRELATION_ID = "Fleet-Correlation-Id"
HDR_MESSAGE_TYPE = "Fleet-Type"
HDR_CHUNK = "Fleet-Chunk"
HDR_PARTITION = "Fleet-Partition"
"""On EVENTS: the log partition an event belongs to (its stream's)."""
HDR_PARTITION_POSITION = "Fleet-Partition-Position"
"""On EVENTS: the event's gap-free position within its partition."""

SCHEDULER_QUEUE = "schedulers"
QUERY_SERVICE = "fleet-scheduler"
"""The schedulers' queries as a NATS micro service: `$SRV.PING|INFO|STATS.fleet-scheduler`
finds every running scheduler, its endpoints and their request counts and times."""
SCHEDULER_COMMANDS_CONSUMER = "scheduler-commands"
SCHEDULER_REPORTS_CONSUMER = "scheduler-reports"

KV_API_KEYS = "api_keys"
KV_SCRIPTS = "scripts"

_UNSAFE = {".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "%": "%25"}


def token(value: str | int) -> str:
    """One subject token from a serial / username / id.

    Serials such as `192.168.1.5:5555` contain dots, which NATS reads as token
    separators; those (and wildcards, white space) are percent-encoded.
    """
    text = str(value)
    return "".join(_UNSAFE.get(ch, ch) for ch in text) or "%00"


def untoken(value: str) -> str:
    out = value
    for raw, enc in _UNSAFE.items():
        if raw != "%":
            out = out.replace(enc, raw)
    return out.replace("%25", "%")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_seconds: float
    duplicate_window_seconds: float = 120.0
    max_bytes: int = -1
    retention: Literal["limits", "workqueue"] = "limits"
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)


COMMANDS = StreamSpec(
    name="COMMANDS",
    subjects=["cmd.>"],
    max_age_seconds=7 * 24 * 3600,
    max_bytes=1024**3,
    description="REST commands waiting for a scheduler",
)
EVENTS = StreamSpec(
    name="EVENTS",
    subjects=["evt.>"],
    max_age_seconds=7 * 24 * 3600,
    max_bytes=4 * 1024**3,
    description="every event of the task log, in log order",
)
REPORTS = StreamSpec(
    name="REPORTS",
    subjects=["report.>"],
    max_age_seconds=24 * 3600,
    max_bytes=2 * 1024**3,
    description="what the device agents observed",
)
ALL_STREAMS = (COMMANDS, EVENTS, REPORTS)


# Commands (gateway -> scheduler, JetStream)
def command_subject(aggregate: str, name: str) -> str:
    return f"cmd.{aggregate}.{name}"


# Events (scheduler relay -> JetStream EVENTS)
def event_subject(stream_id: str, event_type: str) -> str:
    """`evt.task.<id>.<type>`, `evt.device.<serial>.<type>`, `evt.account.<name>.<type>`."""
    kind, _, key = stream_id.partition("-")
    return f"evt.{kind}.{token(key)}.{event_type}"


def task_stream_id(task_id: int) -> str:
    return f"task-{task_id}"


def device_stream_id(serial: str) -> str:
    return f"device-{serial}"


def account_stream_id(username: str) -> str:
    return f"account-{username}"


def material_stream_id(material_id: int) -> str:
    return f"material-{material_id}"


# Reports (agent -> scheduler, JetStream REPORTS)
def report_subject(agent_id: str, report_type: str) -> str:
    return f"report.{token(agent_id)}.{report_type}"


# Agent requests (scheduler -> agent, core NATS request/reply)
def agent_run_subject(agent_id: str) -> str:
    return f"agent.{token(agent_id)}.run"


def agent_runs_subject(agent_id: str) -> str:
    """Many runs in one request (`RunBatch`), answered run by run (`RunBatchReply`)."""
    return f"agent.{token(agent_id)}.runs"


def agent_stop_subject(agent_id: str) -> str:
    return f"agent.{token(agent_id)}.stop"


def agent_device_subject(agent_id: str) -> str:
    """A call on one phone (jsonrpc, hierarchy, screenshot, adb) for a leased session.

    The agent answers on the request's reply subject with a `DeviceCallMeta` message,
    then the body in `Fleet-Chunk`-numbered pieces below the bus's payload limit."""
    return f"agent.{token(agent_id)}.device"


def heartbeat_subject(agent_id: str) -> str:
    return f"heartbeat.{token(agent_id)}"


HEARTBEAT_WILDCARD = "heartbeat.*"

# Core NATS, not stored: every scheduler says it is alive here (fleet_contracts.presence).
SCHEDULER_PRESENCE = "scheduler.presence"


# Queries (gateway -> scheduler, core NATS request/reply, queue group `schedulers`)
QUERY_TASK_LIST = "query.task.list"
QUERY_TASK_GET = "query.task.get"
QUERY_TASK_STATS = "query.task.stats"
QUERY_TASK_EVENTS = "query.task.events"
QUERY_DEVICE_LIST = "query.device.list"
QUERY_ACCOUNT_LIST = "query.account.list"
QUERY_COMMAND_RESULT = "query.command.result"
QUERY_MATERIAL_LIST = "query.material.list"
QUERY_MATERIAL_GET = "query.material.get"
QUERY_PING = "query.ping"
QUERY_GROUP_LIST = "query.group.list"
QUERY_SCHEDULE_LIST = "query.schedule.list"
QUERY_SCHEDULE_GET = "query.schedule.get"
QUERY_WEBHOOK_LIST = "query.webhook.list"
QUERY_WEBHOOK_GET = "query.webhook.get"
SCHEDULER_WEBHOOKS_CONSUMER = "scheduler-webhooks"
QUERY_LEASE_CHECK = "query.lease.check"
QUERY_LEASE_LIST = "query.lease.list"
QUERY_RPC_DEVICES = "query.rpc.devices"
QUERY_CUSTOM_SCRIPTS = "query.script.custom"
QUERY_ADB_HOSTS = "query.host.adb"
