"""Commands through COMMANDS: their results, their events and the read-model rows."""

from __future__ import annotations

from typing import Any

import asyncpg

from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.commands import (
    BatchDeleteTasks,
    CreateTasks,
    DeleteTask,
    RegisterAccount,
    RemoveAccount,
    RetryAllTasks,
    RetryTask,
    StopTask,
)
from fleet_contracts.queries import (
    GetCommandResult,
    GetStats,
    GetTask,
    ListAccounts,
    ListTasks,
    Ping,
    TaskEvents,
)
from fleet_contracts.rest import AccountRequest, CreateTaskRequest
from fleet_scheduler.app import Scheduler

from .conftest import Bus, FakeAgent, FakeClock, eventually, hhmm_ahead

pytestmark = []


def create(**body: Any) -> CreateTasks:
    return CreateTasks(
        request=CreateTaskRequest.model_validate({"script_name": "post", **body}),
        source=body.pop("source", TaskSource.API),
    )


async def events_of(db: asyncpg.Connection, task_id: int) -> list[str]:
    rows = await db.fetch(
        "SELECT type FROM events WHERE stream_id = $1 ORDER BY version", f"task-{task_id}"
    )
    return [r["type"] for r in rows]


async def test_create_records_events_rows_and_counters(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection, clock: FakeClock
) -> None:
    agent.answer = False  # keep the tasks from running while we look
    at = hhmm_ahead(clock.now)
    result = await bus.command(
        create(
            serials=["device_serial_1", "device_serial_2"],
            script_config={"captions": "{Hi|Hello} there", "material_list": ["C:/v/a.mp4"]},
            start_time=at,
        )
    )
    assert result.code == 0, result.message
    assert result.data["created_count"] == 2
    ids = result.data["task_ids"]
    assert len(ids) == 2 and ids[0] < ids[1]
    assert await events_of(db, ids[0]) == ["task.created"]
    row = await db.fetchrow("SELECT * FROM tasks WHERE id = $1", ids[0])
    assert row["serial"] == "device_serial_1" and row["status"] == 0
    assert row["script_config"]["captions"] in ("Hi there", "Hello there")
    view = (await bus.query(GetTask(task_id=ids[0]))).data
    assert view["reason"] == f"start_time {at} UTC"
    assert view["source"] == "api"
    stats = (await bus.query(GetStats())).data
    assert stats == {"total": 2, "pending": 2, "running": 0, "completed": 0, "failed": 0}


async def test_bad_creates_are_refused_whole_and_name_the_problem(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    unknown = await bus.command(create(serials=["device_serial_1", "nope_1", "nope_2"]))
    assert unknown.code == ErrorCode.INVALID_PARAMETERS
    assert unknown.message == "serials: unknown device(s): nope_1, nope_2"
    script = await bus.command(create(serials=["device_serial_1"], script_name="dance"))
    assert script.code == ErrorCode.SCRIPT_NOT_SUPPORTED
    user = await bus.command(create(usernames=["ghost"]))
    assert user.code == ErrorCode.INVALID_PARAMETERS and "ghost" in user.message
    assert await db.fetchval("SELECT count(*) FROM tasks") == 0
    assert await db.fetchval("SELECT count(*) FROM events WHERE stream_id LIKE 'task-%'") == 0


async def test_username_and_multi_account_modes(bus: Bus, agent: FakeAgent) -> None:
    agent.answer = False
    by_name = await bus.command(create(usernames=["device_serial_2_b"]))
    assert by_name.code == 0
    task = (await bus.query(GetTask(task_id=by_name.data["task_ids"][0]))).data
    assert (task["serial"], task["username"]) == ("device_serial_2", "device_serial_2_b")
    multi = await bus.command(create(serials=["device_serial_1"], enable_multi_account=True))
    assert multi.data["created_count"] == 2
    page = (await bus.query(ListTasks(serial="device_serial_1"))).data
    assert sorted(t["username"] for t in page["tasks"]) == [
        "device_serial_1_a",
        "device_serial_1_b",
    ]


async def test_duplicate_delivery_is_applied_once(bus: Bus, agent: FakeAgent) -> None:
    agent.answer = False
    cmd = create(serials=["device_serial_3"])
    first = await bus.command(cmd)
    # The same command published again after JetStream's duplicate window: another
    # Nats-Msg-Id, the same command id.
    again = await bus.command(cmd, msg_id="republished-later")
    assert again.data == first.data
    stats = (await bus.query(GetStats())).data
    assert stats["total"] == 1
    recorded = (await bus.query(GetCommandResult(command_id=cmd.message_id))).data
    assert recorded["data"] == first.data
    missing = await bus.query(GetCommandResult(command_id="never-sent"))
    assert missing.code == ErrorCode.NOT_FOUND


async def test_stop_retry_delete_and_batch_delete(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection, clock: FakeClock
) -> None:
    agent.answer = False
    at = hhmm_ahead(clock.now)
    ids = (await bus.command(create(serials=["device_serial_1"], start_time=at))).data["task_ids"]
    [tid] = ids
    stop = await bus.command(StopTask(task_id=tid))
    assert stop.code == 0
    view = (await bus.query(GetTask(task_id=tid))).data
    assert (view["status"], view["reason"]) == (3, "stopped")
    again = await bus.command(StopTask(task_id=tid))
    assert again.code == ErrorCode.WRONG_STATE
    retried = await bus.command(RetryTask(task_id=tid))
    assert retried.code == 0
    view = (await bus.query(GetTask(task_id=tid))).data
    assert (view["status"], view["retry_count"]) == (0, 1)
    not_failed = await bus.command(RetryTask(task_id=tid))
    assert not_failed.code == ErrorCode.WRONG_STATE
    assert "only failed tasks can be retried" in not_failed.message
    assert (await bus.command(DeleteTask(task_id=tid))).code == 0
    gone = await bus.query(GetTask(task_id=tid))
    assert gone.code == ErrorCode.NOT_FOUND and str(tid) in gone.message
    history = (await bus.query(TaskEvents(task_id=tid))).data
    types = [e["type"] for e in history]
    # After the retry it is due at once, so it may have been dispatched before the delete.
    assert types[:3] == ["task.created", "task.stopped", "task.retried"]
    assert types[-2:] == ["task.stopped", "task.deleted"]
    assert history[0]["causation_id"]
    assert (await bus.command(DeleteTask(task_id=tid))).code == ErrorCode.NOT_FOUND
    more = (await bus.command(create(serials=["device_serial_2", "device_serial_3"]))).data
    batch = await bus.command(BatchDeleteTasks(task_ids=[*more["task_ids"], tid, 9999]))
    assert batch.data == {
        "deleted_ids": more["task_ids"],
        "deleted_count": 2,
        "not_found_ids": [tid, 9999],
    }
    stats = (await bus.query(GetStats())).data
    assert stats == {"total": 0, "pending": 0, "running": 0, "completed": 0, "failed": 0}


async def test_retry_all_moves_every_failed_task_back(
    bus: Bus, agent: FakeAgent, clock: FakeClock
) -> None:
    agent.answer = False
    at = hhmm_ahead(clock.now)
    ids = (
        await bus.command(create(serials=["device_serial_1", "device_serial_2"], start_time=at))
    ).data["task_ids"]
    for tid in ids:
        await bus.command(StopTask(task_id=tid))
    assert (await bus.query(GetStats())).data["failed"] == 2
    result = await bus.command(RetryAllTasks())
    assert result.data == {"task_ids": ids, "retried_count": 2}
    assert (await bus.query(GetStats())).data["pending"] == 2
    assert (await bus.query(ListTasks(status=0, page_size=1))).data["total"] == 2


async def test_accounts_registered_through_the_api_win(bus: Bus, agent: FakeAgent) -> None:
    reg = RegisterAccount(
        account=AccountRequest(username="device_serial_1_a", serial="device_serial_2")
    )
    assert (await bus.command(reg)).code == 0
    accounts = {a["username"]: a for a in (await bus.query(ListAccounts())).data["accounts"]}
    assert accounts["device_serial_1_a"]["serial"] == "device_serial_2"
    assert accounts["device_serial_1_a"]["source"] == "api"
    bad = RegisterAccount(account=AccountRequest(username="z", serial="nowhere"))
    assert (await bus.command(bad)).code == ErrorCode.INVALID_PARAMETERS
    assert (await bus.command(RemoveAccount(username="device_serial_1_a"))).code == 0
    assert (await bus.command(RemoveAccount(username="device_serial_1_a"))).code == 404_01


async def test_list_filters_and_pages(bus: Bus, agent: FakeAgent, scheduler: Scheduler) -> None:
    agent.answer = False
    await bus.command(create(serials=["device_serial_1", "device_serial_2", "device_serial_3"]))
    ui = CreateTasks(
        request=CreateTaskRequest(serials=["device_serial_1"], script_name="post"),
        source=TaskSource.UI,
    )
    await bus.command(ui)
    page = (await bus.query(ListTasks(page=2, page_size=3))).data
    assert page["total"] == 4 and len(page["tasks"]) == 1 and page["page"] == 2
    assert (await bus.query(ListTasks(source=TaskSource.UI))).data["total"] == 1
    assert (await bus.query(ListTasks(serial="device_serial_1"))).data["total"] == 2
    assert (await bus.query(ListTasks(script_name="other"))).data["total"] == 0
    ping = (await bus.query(Ping())).data
    assert ping == {"scheduler_id": scheduler.settings.scheduler_id}


async def test_commands_survive_a_nats_restart(
    bus: Bus, agent: FakeAgent, nats_server: Any
) -> None:
    agent.answer = False
    assert (await bus.command(create(serials=["device_serial_1"]))).code == 0
    nats_server.restart(kill=True)

    async def accepted() -> bool:
        try:
            result = await bus.command(create(serials=["device_serial_2"]))
        except Exception:
            return False
        return result.code == 0

    await eventually(accepted, within=30, what="a command after the restart")
    assert (await bus.query(GetStats())).data["total"] == 2


async def test_a_command_that_cannot_be_stored_is_answered_not_redelivered_forever(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    # Another publisher than the gateway (which refuses these) sends values Postgres
    # cannot take: an id past 64 bits, a NUL byte in a text.
    poison = BatchDeleteTasks(task_ids=[2**70])
    huge = await bus.command(poison)
    assert huge.code == ErrorCode.INVALID_PARAMETERS
    assert "batch_delete_tasks" in huge.message
    nul = await bus.command(RemoveAccount(username="bad\x00name"))
    assert nul.code == ErrorCode.INVALID_PARAMETERS
    # The same id again gets the recorded answer; the commands behind them still run.
    assert await bus.command(poison, msg_id="past-the-dedup-window") == huge
    ok = await bus.command(create(serials=["device_serial_1"]))
    assert ok.code == 0, ok.message


async def test_results_and_report_ids_past_the_horizon_are_pruned(
    scheduler: Scheduler, db: asyncpg.Connection
) -> None:
    from fleet_scheduler.liveness import prune_results

    for table, key in (("command_results", "command_id"), ("processed_reports", "message_id")):
        extra = ", result" if table == "command_results" else ""
        value = ", '{}'::jsonb" if extra else ""
        await db.execute(
            f"INSERT INTO {table} ({key}{extra}, recorded_at) VALUES"
            f" ('old'{value}, now() - interval '9 days'), ('new'{value}, now() - interval '1 hour')"
        )
    assert scheduler.ctx is not None
    await prune_results(scheduler.ctx)
    assert [r[0] for r in await db.fetch("SELECT command_id FROM command_results")] == ["new"]
    assert [r[0] for r in await db.fetch("SELECT message_id FROM processed_reports")] == ["new"]
