"""Every message type survives the wire, and tolerates fields from a newer version."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from fleet_contracts import agent, commands, events, queries
from fleet_contracts.codes import ErrorCode, TaskStatus
from fleet_contracts.groups import CreateGroupRequest
from fleet_contracts.rest import AccountRequest, CreateTaskRequest
from fleet_contracts.schedules import ScheduleRequest
from fleet_contracts.subjects import event_subject, token, untoken
from fleet_contracts.webhooks import WebhookRequest

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
REQ = CreateTaskRequest(serials=["s1", "s2"], script_name="post", script_config={})

COMMANDS: list[BaseModel] = [
    commands.CreateTasks(request=REQ),
    commands.StopTask(task_id=1),
    commands.DeleteTask(task_id=1),
    commands.BatchDeleteTasks(task_ids=[1, 2]),
    commands.RetryTask(task_id=1),
    commands.RetryAllTasks(),
    commands.RegisterAccount(account=AccountRequest(username="u", serial="s1")),
    commands.RemoveAccount(username="u"),
    commands.CreateGroup(group=CreateGroupRequest(name="shop-a", serials=["s1"])),
    commands.ChangeGroupDevices(group_id=1, add=["s2"], remove=["s1"]),
    commands.DefineSchedule(
        schedule=ScheduleRequest(cron="0 9 * * *", group="shop-a", script_name="post")
    ),
    commands.RegisterWebhook(
        hook=WebhookRequest(url="https://h.example/x", event_types=["batch.finished"])
    ),
]
EVENTS: list[BaseModel] = [
    events.TaskCreated(task_id=1, serial="s", script_name="post", script_config={}, due_at=NOW),
    events.TaskScheduled(task_id=1, due_at=NOW, reason="start_time 09:30"),
    events.TaskDispatched(task_id=1, serial="s", agent_id="a", dispatch_id="d", lease_until=NOW),
    events.TaskStarted(task_id=1, serial="s", agent_id="a", dispatch_id="d"),
    events.TaskProgressed(task_id=1, step="upload", percent=50),
    events.TaskCompleted(task_id=1, result={"ok": True}),
    events.TaskFailed(task_id=1, reason="device disconnected"),
    events.TaskStopped(task_id=1),
    events.TaskRequeued(task_id=1, reason="device busy", due_at=NOW),
    events.TaskRetried(task_id=1, retry_count=1, due_at=NOW),
    events.TaskDeleted(task_id=1),
    events.DeviceConnected(serial="s", agent_id="a", host="h"),
    events.DeviceDisconnected(serial="s", agent_id="a"),
    events.AccountsReported(serial="s", agent_id="a", accounts=[{"username": "u"}]),
    events.AccountRegistered(username="u", serial="s"),
    events.AccountRemoved(username="u"),
    events.GroupCreated(group_id=1, name="shop-a"),
    events.GroupDevicesAdded(group_id=1, serials=["s1"]),
    events.ScheduleDefined(schedule_id=1, spec={"cron": "0 9 * * *"}, defined_at=NOW),
    events.ScheduleFired(schedule_id=1, fire_at=NOW, task_ids=[1, 2], missed=1),
    events.WebhookRegistered(hook_id=1, url="https://h.example/x", event_types=["task.failed"]),
]
REPORTS: list[BaseModel] = [
    agent.AgentStartedReport(agent_id="a", host="h", devices=[agent.DeviceInfo(serial="s")]),
    agent.DeviceConnectedReport(agent_id="a", host="h", device=agent.DeviceInfo(serial="s")),
    agent.DeviceDisconnectedReport(agent_id="a", serial="s"),
    agent.AccountsReport(agent_id="a", serial="s", accounts=[{"username": "u"}]),
    agent.TaskStartedReport(agent_id="a", task_id=1, dispatch_id="d", serial="s"),
    agent.TaskProgressReport(agent_id="a", task_id=1, dispatch_id="d", step="x"),
    agent.TaskCompletedReport(agent_id="a", task_id=1, dispatch_id="d"),
    agent.TaskFailedReport(agent_id="a", task_id=1, dispatch_id="d", reason="r", stopped=True),
]
OTHERS: list[BaseModel] = [
    agent.RunTask(task_id=1, dispatch_id="d", serial="s", script_name="post", script_config={}),
    agent.StopRun(task_id=1),
    agent.AgentReply(accepted=False, reason="busy"),
    agent.Heartbeat(agent_id="a", host="h", devices=[agent.DeviceStatus(serial="s", busy=True)]),
    events.EventEnvelope(
        position=9,
        stream_id="task-1",
        version=2,
        type="task.deleted",
        data={"task_id": 1},
        recorded_at=NOW,
    ),
    commands.CommandResult(command_id="c", data={"task_ids": [1]}),
    *(
        cls(**args)
        for cls, args in [
            (queries.ListTasks, {"status": 3}),
            (queries.GetTask, {"task_id": 1}),
            (queries.GetStats, {}),
            (queries.TaskEvents, {"task_id": 1}),
            (queries.ListDevices, {}),
            (queries.ListAccounts, {}),
            (queries.GetCommandResult, {"command_id": "c"}),
            (queries.Ping, {}),
        ]
    ),
]


def _reparse(msg: BaseModel, raw: str) -> BaseModel:
    if msg in COMMANDS:
        return commands.parse_command(raw)
    if msg in REPORTS:
        return agent.parse_report(raw)
    if msg in EVENTS:
        data = json.loads(raw)
        return events.parse_event(data.pop("type"), data)
    return type(msg).model_validate_json(raw)


@pytest.mark.parametrize(
    "msg", COMMANDS + EVENTS + REPORTS + OTHERS, ids=lambda m: type(m).__name__
)
def test_round_trip(msg: BaseModel) -> None:
    raw = msg.model_dump_json()
    assert _reparse(msg, raw) == msg


@pytest.mark.parametrize(
    "msg", COMMANDS + EVENTS + REPORTS + OTHERS, ids=lambda m: type(m).__name__
)
def test_unknown_future_fields_are_tolerated(msg: BaseModel) -> None:
    data: dict[str, Any] = json.loads(msg.model_dump_json())
    data["added_in_v2"] = {"anything": [1, 2]}
    assert _reparse(msg, json.dumps(data)) == msg


def test_every_event_type_has_a_model() -> None:
    adapter: TypeAdapter[Any] = events.EVENT_ADAPTER
    names = {m.model_fields["type"].default for m in (type(e) for e in EVENTS)}
    assert len(names) == len(EVENTS)
    assert adapter.validate_python({"type": "task.deleted", "task_id": 3}).task_id == 3


def test_codes_carry_their_http_status() -> None:
    assert ErrorCode.INVALID_PARAMETERS.http_status == 400
    assert ErrorCode.PLAN_NO_API_ACCESS.http_status == 403
    assert ErrorCode.UNAVAILABLE.http_status == 503
    assert [s.value for s in TaskStatus] == [0, 1, 2, 3]


def test_serials_with_dots_make_one_subject_token() -> None:
    serial = "192.168.1.5:5555"
    subject = event_subject(f"device-{serial}", "device.connected")
    assert subject.split(".")[:3] == ["evt", "device", token(serial)]
    assert untoken(token(serial)) == serial
    assert untoken(token("a%2Eb.c")) == "a%2Eb.c"


@pytest.mark.parametrize(
    ("data_json", "causation_id", "recorded_at"),
    [
        # As PostgreSQL prints jsonb: spaces after separators, keys in its own order.
        ('{"a": [1, 2.5, null], "task_id": 7, "text": "qu\\"ote \\u00e9 \\n"}', "c-1", NOW),
        ("{}", None, datetime(2026, 12, 7, 6, 11, 24, 123456, tzinfo=UTC)),
    ],
)
def test_an_envelope_built_from_a_rows_json_reads_as_the_model_writes_it(
    data_json: str, causation_id: str | None, recorded_at: datetime
) -> None:
    built = events.envelope_json(
        position=12,
        stream_id='task-7 "é"',
        version=3,
        event_type="task.started",
        data_json=data_json,
        recorded_at=recorded_at,
        correlation_id="corr-é",
        causation_id=causation_id,
    )
    model = events.EventEnvelope(
        message_id="12",
        correlation_id="corr-é",
        causation_id=causation_id,
        occurred_at=recorded_at,
        position=12,
        stream_id='task-7 "é"',
        version=3,
        type="task.started",
        data=json.loads(data_json),
        recorded_at=recorded_at,
    )
    assert json.loads(built) == json.loads(model.to_bytes())
    assert events.EventEnvelope.from_bytes(built) == model
