"""retry-all at scale: the answer is a count, so it fits one bus message (NATS's 1 MiB)
however many tasks had failed. Before, a reply naming 131k+ ids failed after the commit,
the batch was redelivered for ever and the caller never had an answer.

The time it takes is printed, not asserted (speed belongs to `make bench`): 12.9 s was
measured on a shared 2-core machine at load average 8, above the gateway's default 10 s
command timeout (FLEET_API_COMMAND_TIMEOUT_SECONDS); nearly all of it is PostgreSQL
maintaining the task table's indexes for 150k updated rows."""

from __future__ import annotations

import time

import asyncpg

from fleet_contracts.commands import RetryAllTasks
from fleet_contracts.queries import GetStats
from fleet_contracts.rest import RETRY_ALL_LISTED
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus

FAILED = 150_000
DEADLINE = 90.0


async def seed_failed(db: asyncpg.Connection, n: int) -> None:
    """`n` failed tasks straight into the read model in one statement (a command each
    would take minutes); retry appends after whatever version a task is at."""
    await db.execute(
        "INSERT INTO tasks (id, serial, script_name, script_config, source, state, status,"
        " reason, created_at, due_at, version, ended_by, dispatch_id, agent_id)"
        " SELECT i, 's' || (i % 500), 'post', '{}'::jsonb, 'api', 'failed', 3,"
        " 'caption box missing', now(), now(), 4, 'failed', 'd' || i, 'a1'"
        " FROM generate_series(1, $1) AS i",
        n,
    )
    await db.execute("SELECT setval('task_ids', $1)", n)


async def test_retry_all_over_150k_failed_tasks_answers_a_count_in_time(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection
) -> None:
    async with Scheduler(settings, relay_enabled=False):
        await seed_failed(db, FAILED)
        started = time.monotonic()
        result = await bus.command(RetryAllTasks(actor="ops-key"), within=DEADLINE)
        took = time.monotonic() - started
        assert result.code == 0, result.message
        assert result.data == {"task_ids": [], "retried_count": FAILED}
        assert len(result.model_dump_json()) < 1024
        stats = (await bus.query(GetStats())).data
        assert (stats["pending"], stats["failed"]) == (FAILED, 0)
    print(f"retry-all over {FAILED} failed tasks answered in {took:.1f}s")
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE state = 'pending'") == FAILED
    actor = await db.fetchval(
        "SELECT metadata->>'actor' FROM events WHERE type = 'task.retried' LIMIT 1"
    )
    assert actor == "ops-key"
    assert RETRY_ALL_LISTED < FAILED
