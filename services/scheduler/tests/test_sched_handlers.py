"""Handlers and the task aggregate on their own: no database, no bus."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.commands import CreateTasks
from fleet_contracts.events import TaskCreated, TaskDeleted, TaskRetried, TaskStopped
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler import handlers
from fleet_scheduler.errors import Rejected
from fleet_scheduler.task import StopOnAgent, TaskState

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def create(**request: object) -> CreateTasks:
    body = {"script_name": "post", **request}
    return CreateTasks(request=CreateTaskRequest.model_validate(body), source=TaskSource.UI)


def test_unknown_serials_reject_the_whole_create_naming_them() -> None:
    cmd = create(serials=["s1", "x", "y"])
    with pytest.raises(Rejected) as err:
        handlers.plan_targets(cmd, {"s1"}, {}, {})
    assert err.value.code == ErrorCode.INVALID_PARAMETERS
    assert err.value.message == "serials: unknown device(s): x, y"


def test_username_mode_targets_the_device_holding_each_account() -> None:
    cmd = create(usernames=["alice", "bob"])
    targets = handlers.plan_targets(cmd, set(), {}, {"alice": "s1", "bob": "s2"})
    assert [(t.serial, t.username) for t in targets] == [("s1", "alice"), ("s2", "bob")]
    with pytest.raises(Rejected, match="usernames: unknown account\\(s\\): carol"):
        handlers.plan_targets(create(usernames=["alice", "carol"]), set(), {}, {"alice": "s1"})


def test_multi_account_needs_accounts_on_every_device() -> None:
    cmd = create(serials=["s1", "s2"], enable_multi_account=True)
    targets = handlers.plan_targets(cmd, {"s1", "s2"}, {"s1": ["b", "a"], "s2": ["c"]}, {})
    assert [(t.serial, t.username) for t in targets] == [("s1", "a"), ("s1", "b"), ("s2", "c")]
    with pytest.raises(Rejected, match=r"enable_multi_account: .*s2"):
        handlers.plan_targets(cmd, {"s1", "s2"}, {"s1": ["a"]}, {})


def test_script_config_is_checked_again() -> None:
    with pytest.raises(Rejected) as err:
        handlers.check_script(create(serials=["s1"], script_name="dance"), {})
    assert err.value.code == ErrorCode.SCRIPT_NOT_SUPPORTED
    bad = create(serials=["s1"], script_config={"post_way": "useSound"})
    with pytest.raises(Rejected, match="sound_name"):
        handlers.check_script(bad, {})


def test_create_makes_one_task_per_target_with_spintax_resolved() -> None:
    cmd = create(
        serials=["s1", "s2"], script_config={"captions": "{a|b|c} {x|y}"}, start_time="09:30"
    )
    config = handlers.check_script(cmd, {})
    targets = handlers.plan_targets(cmd, {"s1", "s2"}, {}, {})
    out = handlers.create_tasks(
        cmd, config, targets, [11, 12], NOW, ZoneInfo("UTC"), random.Random(5)
    )
    assert out.data == {"task_ids": [11, 12], "created_count": 2}
    events = [e.event for e in out.events]
    assert all(isinstance(e, TaskCreated) for e in events)
    created = [e for e in events if isinstance(e, TaskCreated)]
    assert [e.serial for e in created] == ["s1", "s2"]
    assert all(
        e.source == TaskSource.UI and e.wait_reason == "start_time 09:30 UTC" for e in created
    )
    for e in created:
        first, second = e.script_config["captions"].split(" ")
        assert first in "abc" and second in "xy"


def state(status: str, **kw: object) -> TaskState:
    return TaskState(id=7, serial="s1", state=status, version=3, **kw)  # type: ignore[arg-type]


def test_stop_a_running_task_asks_its_agent() -> None:
    out = handlers.stop_task(7, state("running", agent_id="a1", dispatch_id="d1"))
    assert [type(e.event) for e in out.events] == [TaskStopped]
    assert out.events[0].expected_version == 3
    assert out.effects == [StopOnAgent("a1", 7, "d1")]


def test_stop_a_pending_task_fails_it_at_once_and_stop_a_finished_one_is_409() -> None:
    out = handlers.stop_task(7, state("pending"))
    assert [type(e.event) for e in out.events] == [TaskStopped]
    assert out.effects == []
    with pytest.raises(Rejected) as err:
        handlers.stop_task(7, state("completed"))
    assert err.value.code == ErrorCode.WRONG_STATE


def test_retry_only_from_failed() -> None:
    out = handlers.retry_task(7, state("failed", retry_count=1), NOW)
    event = out.events[0].event
    assert isinstance(event, TaskRetried) and event.retry_count == 2 and event.due_at == NOW
    with pytest.raises(Rejected) as err:
        handlers.retry_task(7, state("completed"), NOW)
    assert err.value.message == "task 7 is completed; only failed tasks can be retried"
    with pytest.raises(Rejected) as missing:
        handlers.retry_task(7, None, NOW)
    assert missing.value.code == ErrorCode.NOT_FOUND


def test_delete_running_stops_first_and_versions_follow() -> None:
    out = handlers.delete_task(7, state("running", agent_id="a1", dispatch_id="d1"))
    assert [type(e.event) for e in out.events] == [TaskStopped, TaskDeleted]
    assert [e.expected_version for e in out.events] == [3, 4]
    with pytest.raises(Rejected):
        handlers.delete_task(7, state("failed", deleted=True))
