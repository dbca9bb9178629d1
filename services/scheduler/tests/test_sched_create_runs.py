"""A fetched batch's creates decided as one run: each still judged alone and in order,
its events under its own command's ids, and a later command in the batch sees them."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.commands import AnyCommand, CreateTasks, StopTask
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler import commands
from fleet_scheduler.app import Scheduler

from .conftest import FakeAgent


def create(actor: str = "local", limit: int | None = None, **body: Any) -> CreateTasks:
    return CreateTasks(
        request=CreateTaskRequest.model_validate({"script_name": "post", **body}),
        source=TaskSource.API,
        actor=actor,
        device_limit=limit,
    )


async def test_a_batch_of_creates_is_judged_command_by_command(
    scheduler: Scheduler, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    agent.answer = False
    first = create("k1", 2, serials=["device_serial_1", "device_serial_2"])
    unknown = create(serials=["device_serial_1", "nope"])
    over = create("k1", 2, serials=["device_serial_3"])  # k1 holds 1 and 2 from `first`
    same_phone = create("k1", 2, serials=["device_serial_1"])  # already counted: free
    other_key = create("k2", 1, serials=["device_serial_3"])
    bad_script = create(serials=["device_serial_3"], script_name="dance")
    stop = StopTask(task_id=1)  # `first`'s first task, created earlier in this batch
    batch: list[AnyCommand] = [first, unknown, over, same_phone, other_key, bad_script, stop]
    batch.append(first)  # delivered twice in one batch: applied once, answered twice
    assert scheduler.ctx is not None
    outcomes = await commands.handle_commands(scheduler.ctx, batch)
    results = [result for result, _ in outcomes]
    assert [r.code for r in results] == [
        0,
        ErrorCode.INVALID_PARAMETERS,
        ErrorCode.PLAN_NO_API_ACCESS,
        0,
        0,
        ErrorCode.SCRIPT_NOT_SUPPORTED,
        0,
        0,
    ]
    assert results[0].data == {"task_ids": [1, 2], "created_count": 2}
    assert results[3].data == {"task_ids": [3], "created_count": 1}
    assert results[4].data == {"task_ids": [4], "created_count": 1}
    assert results[7] == results[0]
    assert "nope" in results[1].message
    rows = await db.fetch(
        "SELECT stream_id, type, metadata->>'causation_id' AS cause FROM events"
        " WHERE stream_id LIKE 'task-%' ORDER BY position"
    )
    causes = {(r["stream_id"], r["type"]): r["cause"] for r in rows}
    assert causes[("task-1", "task.created")] == first.message_id
    assert causes[("task-2", "task.created")] == first.message_id
    assert causes[("task-3", "task.created")] == same_phone.message_id
    assert causes[("task-4", "task.created")] == other_key.message_id
    assert sum(1 for r in rows if r["type"] == "task.created") == 4
    assert [r["cause"] for r in rows if r["stream_id"] == "task-1"][1:] == [stop.message_id]
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 1") == 3
    recorded = await db.fetchval("SELECT count(*) FROM command_results")
    assert recorded == len({cmd.message_id for cmd in batch})


async def test_batches_in_hand_at_once_keep_a_keys_device_limit(
    scheduler: Scheduler, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    # Batches in hand at once (as with two schedulers, each with a batch). Creates
    # without a limit decide before they lock (`commands._late`); a key's limit is still
    # counted under every partition's lock, so of two creates of k1 (limit 1) on
    # different phones, in hand together, exactly one passes.
    agent.answer = False
    assert scheduler.ctx is not None
    ctx = scheduler.ctx
    free = [create(serials=["device_serial_3"]), create(serials=["device_serial_2"])]
    limited = [
        create("k1", 1, serials=["device_serial_1"]),
        create("k1", 1, serials=["device_serial_2"]),
    ]
    outcomes = await asyncio.gather(
        *(commands.handle_commands(ctx, [cmd]) for cmd in [*free, *limited])
    )
    codes = [result.code for [(result, _)] in outcomes]
    assert codes[:2] == [0, 0]
    assert sorted(codes[2:]) == [0, ErrorCode.PLAN_NO_API_ACCESS]
    assert await db.fetchval("SELECT count(*) FROM tasks") == 3
    ids = [r["id"] for r in await db.fetch("SELECT id FROM tasks ORDER BY id")]
    assert ids == [1, 2, 3]
