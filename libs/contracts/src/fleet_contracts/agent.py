"""The agent protocol: run / stop requests, reports, heartbeats and device facts.

Run and stop are core-NATS requests to `agent.<id>.run|stop`; the agent answers with
an `AgentReply` at once (accepted or refused, with a reason), then reports what
happens on the REPORTS stream. Heartbeats go to `heartbeat.<agent_id>` every few
seconds; a scheduler that hears none for its lease declares the agent lost.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fleet_contracts.messages import Message
from fleet_contracts.scripts import ScriptSpec
from fleet_contracts.sessions import CustomProgram


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    serial: str
    model: str | None = None
    android_version: str | None = None
    battery: int | None = None


class DeviceStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    serial: str
    busy: bool = False
    task_id: int | None = None
    battery: int | None = None
    dispatch_id: str | None = Field(None, description="the run holding the phone, when busy")


# Requests to one agent
class RunTask(Message):
    task_id: int
    dispatch_id: str
    serial: str
    username: str | None = None
    script_name: str
    script_config: dict[str, Any]
    incarnation: str = Field(
        "",
        description="the agent process this run was dispatched to; another one refuses it"
        " (empty: any, as sent by schedulers that predate fencing)",
    )
    program: CustomProgram | None = None
    """Set for a custom script: the registered program to run (without a shell)."""
    session_id: str | None = None
    """The secret of the lease made for a custom script's run (TIKMATRIX_SESSION_ID)."""


class RunBatch(Message):
    """Every run one claim gives one agent, in one request to `agent.<id>.runs`.

    The agent answers with a `RunBatchReply` holding one `AgentReply` per run, in the
    order of `runs`; each run is accepted or refused on its own, as if sent alone."""

    runs: list[RunTask] = Field(default_factory=list)


class StopRun(Message):
    task_id: int
    dispatch_id: str = ""
    reason: str = "stopped"


class AgentReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    accepted: bool
    reason: str = ""


class RunBatchReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    replies: list[AgentReply] = Field(default_factory=list)


class Heartbeat(Message):
    agent_id: str
    host: str
    devices: list[DeviceStatus] = Field(default_factory=list)
    interval_seconds: float = 5.0
    incarnation: str = Field("", description="this agent process (new at every start)")
    material_cache: dict[str, int] | None = Field(
        None, description="the host's library cache: hits, misses, fetched_bytes, bytes, items"
    )


# Reports: agent -> REPORTS stream -> scheduler
class Report(Message):
    agent_id: str


class AgentStartedReport(Report):
    """Sent at agent start: the devices it holds now. Devices it held before and does
    not list here are disconnected; tasks it ran before the restart are lost."""

    type: Literal["agent.started"] = "agent.started"
    host: str
    incarnation: str = Field("", description="this agent process (new at every start)")
    devices: list[DeviceInfo] = Field(default_factory=list)
    scripts: list[ScriptSpec] = Field(default_factory=list)


class DeviceConnectedReport(Report):
    type: Literal["device.connected"] = "device.connected"
    host: str
    device: DeviceInfo


class DeviceDisconnectedReport(Report):
    type: Literal["device.disconnected"] = "device.disconnected"
    serial: str
    reason: str = "unplugged"


class AccountsReport(Report):
    type: Literal["device.accounts"] = "device.accounts"
    serial: str
    accounts: list[dict[str, str]] = Field(default_factory=list)


class TaskStartedReport(Report):
    type: Literal["task.started"] = "task.started"
    task_id: int
    dispatch_id: str
    serial: str


OUTPUT_STEP = "output"
"""The step a custom script's printed output travels under, a piece per progress report:
`GET /script/task/{id}/log` joins the messages of these. Never dropped as a mere step is."""


class TaskProgressReport(Report):
    type: Literal["task.progress"] = "task.progress"
    task_id: int
    dispatch_id: str
    serial: str | None = None
    """The phone the run is on (agents before this field leave it out): the scheduler
    finds the task's partition from it without a read; a wrong one only sends the
    report's batch the slow way (every partition locked)."""
    step: str
    percent: int | None = None
    message: str = ""


class TaskCompletedReport(Report):
    type: Literal["task.completed"] = "task.completed"
    task_id: int
    dispatch_id: str
    serial: str | None = None
    """The phone the run is on (agents before this field leave it out): the scheduler
    finds the task's partition from it without a read; a wrong one only sends the
    report's batch the slow way (every partition locked)."""
    result: dict[str, Any] = Field(default_factory=dict)


class TaskFailedReport(Report):
    """The script ended without success. `stopped` is true when it ended because a
    stop was asked for; either way the device is free again."""

    type: Literal["task.failed"] = "task.failed"
    task_id: int
    dispatch_id: str
    serial: str | None = None
    """The phone the run is on (agents before this field leave it out): the scheduler
    finds the task's partition from it without a read; a wrong one only sends the
    report's batch the slow way (every partition locked)."""
    reason: str
    stopped: bool = False
    screenshot: str | None = None


AnyReport = Annotated[
    AgentStartedReport
    | DeviceConnectedReport
    | DeviceDisconnectedReport
    | AccountsReport
    | TaskStartedReport
    | TaskProgressReport
    | TaskCompletedReport
    | TaskFailedReport,
    Field(discriminator="type"),
]
REPORT_ADAPTER: TypeAdapter[AnyReport] = TypeAdapter(AnyReport)


class ReportBatch(Report):
    """Reports an agent coalesced over a short window, published as one message on
    `report.<id>.batch`. Each inner report keeps its own message id, so a scheduler
    tracks (and deduplicates) them one by one; their order is the order they happened."""

    type: Literal["reports.batch"] = "reports.batch"
    reports: list[AnyReport] = Field(default_factory=list)


_ANY_MESSAGE: TypeAdapter[AnyReport | ReportBatch] = TypeAdapter(
    Annotated[AnyReport | ReportBatch, Field(discriminator="type")]
)


def parse_report(raw: bytes | str) -> AnyReport:
    return REPORT_ADAPTER.validate_json(raw)


def parse_reports(raw: bytes | str) -> list[AnyReport]:
    """The reports one REPORTS message carries: a batch's, in order, or the one report."""
    message = _ANY_MESSAGE.validate_json(raw)
    return list(message.reports) if isinstance(message, ReportBatch) else [message]
