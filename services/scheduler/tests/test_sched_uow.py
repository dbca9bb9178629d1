"""The unit of work reads each task row once: what a loop loads to decide is what the
projection writes back, and a second append in the same transaction decides on the
state the first one left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from fleet_contracts.agent import AnyReport, TaskCompletedReport, TaskStartedReport
from fleet_contracts.events import DeviceConnected, TaskCreated, TaskDispatched
from fleet_contracts.subjects import device_stream_id, task_stream_id
from fleet_scheduler import reports
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.migrate import installed_partitions, migrate
from fleet_scheduler.partitions import of_serial
from fleet_scheduler.store import NewEvent, init_connection
from fleet_scheduler.task import Task
from fleet_scheduler.uow import lock_partitions, unit_of_work

DUE = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
TASKS = 40


class CountingConnection(asyncpg.Connection):  # type: ignore[misc]
    """Keeps every statement sent while `counting` is on."""

    sent: list[str] = []
    counting = False

    def _keep(self, query: str) -> None:
        if CountingConnection.counting:
            CountingConnection.sent.append(query)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._keep(query)
        return await super().execute(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._keep(query)
        return await super().fetch(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._keep(query)
        return await super().fetchval(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._keep(query)
        return await super().fetchrow(query, *args, **kwargs)


def task_reads() -> list[str]:
    """Reads of task rows (not the lookup of the partitions a batch will lock, which
    reads no row's state)."""
    return [
        q
        for q in CountingConnection.sent
        if q.lstrip().startswith("SELECT")
        and " FROM tasks" in q
        and not q.startswith("SELECT DISTINCT partition")
    ]


class Ctx:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.owned: frozenset[int] = frozenset()  # leases nothing: claims nothing
        self.partition_count = 0  # not known: a batch's partitions are read

    def appended(self) -> None:
        pass


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(
        pg_dsn,
        init=init_connection,
        min_size=1,
        max_size=2,
        connection_class=CountingConnection,
    ) as p:
        async with p.acquire() as conn:
            await migrate(conn)
        CountingConnection.sent = []
        yield p
        CountingConnection.counting = False


async def dispatched(pool: asyncpg.Pool, count: int) -> list[tuple[int, str]]:
    """`count` tasks, each dispatched on its own phone: (task id, serial)."""
    tasks = [(i, f"s{i}") for i in range(1, count + 1)]
    async with unit_of_work(pool) as uow:
        await uow.append(
            [
                NewEvent(device_stream_id(s), DeviceConnected(serial=s, agent_id="a", host="h"))
                for _, s in tasks
            ]
            + [
                NewEvent(
                    task_stream_id(i),
                    TaskCreated(
                        task_id=i, serial=s, script_name="post", script_config={}, due_at=DUE
                    ),
                )
                for i, s in tasks
            ]
            + [
                NewEvent(
                    task_stream_id(i),
                    TaskDispatched(
                        task_id=i,
                        serial=s,
                        agent_id="a",
                        dispatch_id=f"d{i}",
                        lease_until=DUE + timedelta(days=3650),
                    ),
                )
                for i, s in tasks
            ]
        )
    return tasks


async def test_a_report_batch_reads_each_task_row_once(pool: asyncpg.Pool) -> None:
    tasks = await dispatched(pool, TASKS)
    batch: list[AnyReport] = [
        TaskStartedReport(agent_id="a", task_id=i, dispatch_id=f"d{i}", serial=s) for i, s in tasks
    ]
    batch += [TaskCompletedReport(agent_id="a", task_id=i, dispatch_id=f"d{i}") for i, _ in tasks]
    CountingConnection.counting = True
    await reports.handle_reports(Ctx(pool), batch)  # type: ignore[arg-type]
    CountingConnection.counting = False
    # One read decides and locks every row; the projection writes it back unread.
    assert len(task_reads()) == 1
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT state, version, progress FROM tasks ORDER BY id")
        busy = await conn.fetchval("SELECT count(*) FROM devices WHERE busy")
    assert [tuple(r) for r in rows] == [("completed", 4, 100)] * TASKS
    assert busy == 0


async def test_a_second_append_decides_on_what_the_first_left(pool: asyncpg.Pool) -> None:
    [(task_id, _)] = await dispatched(pool, 1)
    CountingConnection.counting = True
    async with unit_of_work(pool) as uow:
        task = Task((await uow.load_tasks([task_id]))[task_id])
        task.started("d1")
        outcome = Outcome()
        outcome.take(task)
        await uow.append(outcome.events)
        again = (await uow.load_tasks([task_id]))[task_id]
        assert (again.state, again.version, again.script_name) == ("running", 3, "post")
        task = Task(again)
        task.completed("d1", {})
        outcome = Outcome()
        outcome.take(task)
        await uow.append(outcome.events)
    CountingConnection.counting = False
    assert len(task_reads()) == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, version, progress FROM tasks WHERE id = $1", task_id
        )
    assert tuple(row) == ("completed", 4, 100)


async def test_rows_only_the_projection_read_are_read_whole_to_decide(pool: asyncpg.Pool) -> None:
    """The projection reads only the columns events change: a later decision needs the
    creation's too (the script a run carries), so it reads the row again, whole."""
    [(task_id, serial)] = await dispatched(pool, 1)
    async with unit_of_work(pool) as uow:
        started = Task((await uow.load_tasks([task_id]))[task_id])
        uow.forget_tasks()
        started.started("d1")
        outcome = Outcome()
        outcome.take(started)
        await uow.append(outcome.events)  # the projection's own, partial read
        state = (await uow.load_tasks([task_id]))[task_id]
    assert (state.state, state.version, state.serial, state.script_name) == (
        "running",
        3,
        serial,
        "post",
    )


async def test_a_report_batch_does_not_wait_for_another_partitions_writer(
    pool: asyncpg.Pool, pg_dsn: str
) -> None:
    tasks = await dispatched(pool, TASKS)
    async with pool.acquire() as conn:
        count = await installed_partitions(conn)
    task_id, serial = tasks[0]
    mine = of_serial(serial, count)
    other = next(p for p in range(1, count + 1) if p != mine)
    batch: list[AnyReport] = [
        TaskStartedReport(agent_id="a", task_id=task_id, dispatch_id=f"d{task_id}", serial=serial)
    ]
    writer = await asyncpg.connect(pg_dsn)
    try:
        async with writer.transaction():
            await lock_partitions(writer, [other])  # a claim or report batch elsewhere
            await asyncio.wait_for(reports.handle_reports(Ctx(pool), batch), 10)  # type: ignore[arg-type]
    finally:
        await writer.close()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM tasks WHERE id = $1", task_id) == "running"
