"""The automatic retry loop leaves a failure alone while its phone is still held for it
(the agent has not said the run ended: it may yet report the post went out)."""

from __future__ import annotations

import asyncpg

from fleet_contracts.commands import CreateTasks
from fleet_contracts.queries import GetTask
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler.app import Scheduler
from fleet_scheduler.autoretry import retry_failed

from .conftest import Bus, FakeAgent, eventually


async def test_a_failure_waits_for_its_phone_to_be_released_before_a_retry(
    bus: Bus, agent: FakeAgent, scheduler: Scheduler, db: asyncpg.Connection
) -> None:
    agent.answer = False  # the task stays pending: its ending is written below
    retry = {"max_attempts": 2, "min_backoff_seconds": 0, "max_backoff_seconds": 0}
    request = CreateTaskRequest.model_validate(
        {"serials": ["device_serial_1"], "script_name": "post", "retry": retry}
    )
    result = await bus.command(CreateTasks(request=request))
    [task_id] = result.data["task_ids"]
    # As a lost run's task will look once the phone stays held until its agent speaks.
    await db.execute(
        "UPDATE tasks SET state = 'failed', status = 3, reason = 'agent lost: a1 restarted',"
        " reason_class = 'agent_lost', retry_checked = false, finished_at = now()"
        " WHERE id = $1",
        task_id,
    )
    await db.execute(
        "UPDATE devices SET busy = true, current_task_id = $1 WHERE serial = 'device_serial_1'",
        task_id,
    )
    assert scheduler.ctx is not None
    assert await retry_failed(scheduler.ctx) == 0
    assert not await db.fetchval("SELECT retry_checked FROM tasks WHERE id = $1", task_id)

    await db.execute("UPDATE devices SET busy = false, current_task_id = NULL")

    async def retried() -> bool:
        task = (await bus.query(GetTask(task_id=task_id))).data
        return bool(task["status"] == 0 and task["auto_retries"] == 1)

    await eventually(retried, what="the automatic retry once the phone is free")
