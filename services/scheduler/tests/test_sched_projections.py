"""Task events projected set-wise: a batch ends in the rows the same events leave when
projected one transaction each, in log order, around events projected on their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from fleet_contracts.events import (
    AccountsReported,
    DeviceConnected,
    DeviceDisconnected,
    DomainEvent,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskDispatched,
    TaskFailed,
    TaskProgressed,
    TaskReportLate,
    TaskRetried,
    TaskStarted,
    TaskStopped,
)
from fleet_contracts.subjects import device_stream_id, task_stream_id
from fleet_scheduler import late
from fleet_scheduler.late import Verdict
from fleet_scheduler.migrate import migrate
from fleet_scheduler.projections import project_all, rebuild, task_state
from fleet_scheduler.store import Metadata, NewEvent, PostgresRecorder, init_connection
from fleet_scheduler.task import Task

DUE = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
LEASE = DUE + timedelta(days=3650)
TIMES = ("created_at", "dispatched_at", "started_at", "finished_at")
# Tasks not deleted by status: the counters are kept per partition (migration 110).
STATUS_COUNTS = (
    "SELECT status, sum(count)::bigint AS count FROM task_counts"
    " GROUP BY 1 HAVING sum(count) <> 0 ORDER BY 1"
)
"""Stamped with the appending transaction's time: compared apart."""


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(pg_dsn, init=init_connection, min_size=1, max_size=2) as p:
        async with p.acquire() as conn:
            await migrate(conn)
        yield p


async def append(
    pool: asyncpg.Pool, events: Sequence[NewEvent], latencies: list[float] | None = None
) -> None:
    """One transaction: append `events` and project them, as `uow.UnitOfWork` does."""
    async with pool.acquire() as conn, conn.transaction():
        recorded = await PostgresRecorder(conn).append(events, Metadata(correlation_id="c-1"))
        await project_all(conn, recorded, latencies)


def on_task(task_id: int, *events: DomainEvent) -> list[NewEvent]:
    return [NewEvent(task_stream_id(task_id), e) for e in events]


def lifecycle(task_id: int, serial: str) -> list[NewEvent]:
    run = f"run-{task_id}"
    return on_task(
        task_id,
        TaskCreated(
            task_id=task_id,
            serial=serial,
            script_name="post",
            script_config={"caption": "hi"},
            due_at=DUE,
            batch_id="b-1",
            group="g",
            retry_policy={"max_retries": 2},
        ),
        TaskDispatched(
            task_id=task_id,
            serial=serial,
            agent_id="a1",
            dispatch_id=run,
            lease_until=LEASE,
            incarnation="inc-1",
        ),
        TaskStarted(task_id=task_id, serial=serial, agent_id="a1", dispatch_id=run),
        TaskProgressed(task_id=task_id, dispatch_id=run, step="upload", percent=40),
        TaskCompleted(task_id=task_id, dispatch_id=run),
    )


def connected(*serials: str) -> list[NewEvent]:
    return [
        NewEvent(device_stream_id(s), DeviceConnected(serial=s, agent_id="a1", host="h1"))
        for s in serials
    ]


async def task_row(pool: asyncpg.Pool, task_id: int) -> dict[str, Any]:
    row = dict(await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id))
    # Tasks on other phones: their serials, and so their partitions, differ.
    return {
        k: v
        for k, v in row.items()
        if k not in (*TIMES, "id", "serial", "partition", "dispatch_id")
    }


async def device(pool: asyncpg.Pool, serial: str) -> dict[str, Any]:
    return dict(
        await pool.fetchrow(
            "SELECT online, busy, current_task_id, last_task_id, last_finished_at"
            " FROM devices WHERE serial = $1",
            serial,
        )
    )


async def assert_rebuilt_from_its_events(pool: asyncpg.Pool, task_id: int) -> None:
    """The aggregate replayed from its stream is the state loaded from the read model."""
    async with pool.acquire() as conn:
        stream = await PostgresRecorder(conn).read_stream(task_stream_id(task_id))
        loaded = task_state(await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id))
    replayed = Task.from_events([rec.event() for rec in stream], correlation_id="c-1")
    assert replayed.state == loaded


async def test_a_lifecycle_in_one_batch_ends_as_one_event_per_transaction(
    pool: asyncpg.Pool,
) -> None:
    await append(pool, connected("s1", "s2"))
    for new in lifecycle(1, "s1"):
        await append(pool, [new])
    await append(pool, lifecycle(2, "s2"))

    alone, batched = await task_row(pool, 1), await task_row(pool, 2)
    assert batched == alone
    assert batched["state"] == "completed" and batched["status"] == 2
    assert (batched["progress"], batched["ended_by"], batched["version"]) == (100, "completed", 5)
    assert (batched["agent_id"], batched["incarnation"], batched["lease_until"]) == (
        "a1",
        "inc-1",
        LEASE,
    )
    assert (batched["batch_id"], batched["group_name"]) == ("b-1", "g")
    times = await pool.fetchrow("SELECT * FROM tasks WHERE id = 2")
    assert all(times[c] == times["created_at"] for c in TIMES)
    for task_id, serial in ((1, "s1"), (2, "s2")):
        finished = await pool.fetchval("SELECT finished_at FROM tasks WHERE id = $1", task_id)
        assert await device(pool, serial) == {
            "online": True,
            "busy": False,
            "current_task_id": None,
            "last_task_id": task_id,
            "last_finished_at": finished,
        }
    counts = await pool.fetch(STATUS_COUNTS)
    assert [tuple(r) for r in counts] == [(2, 2)]
    for task_id in (1, 2):
        await assert_rebuilt_from_its_events(pool, task_id)


async def test_unconverted_events_between_task_events_keep_their_place(
    pool: asyncpg.Pool,
) -> None:
    """A device connected inside the batch is there for the dispatch after it; one
    disconnected after a dispatch ends free, as the log says."""
    created = TaskCreated(task_id=1, serial="s1", script_name="post", script_config={}, due_at=DUE)
    await append(
        pool,
        [
            *on_task(1, created),
            *connected("s1"),
            *on_task(
                1,
                TaskDispatched(
                    task_id=1, serial="s1", agent_id="a1", dispatch_id="r1", lease_until=LEASE
                ),
            ),
            NewEvent(
                device_stream_id("s1"),
                AccountsReported(serial="s1", agent_id="a1", accounts=[{"username": "u1"}]),
            ),
            NewEvent(
                device_stream_id("s1"),
                DeviceDisconnected(serial="s1", agent_id="a1", reason="unplugged"),
            ),
            *on_task(1, TaskStarted(task_id=1, serial="s1", agent_id="a1", dispatch_id="r1")),
            *connected("s2"),
            *on_task(
                2,
                TaskCreated(
                    task_id=2, serial="s2", script_name="post", script_config={}, due_at=DUE
                ),
                TaskDispatched(
                    task_id=2, serial="s2", agent_id="a1", dispatch_id="r2", lease_until=LEASE
                ),
            ),
        ],
    )
    assert await device(pool, "s1") == {
        "online": False,
        "busy": False,
        "current_task_id": None,
        "last_task_id": None,
        "last_finished_at": None,
    }
    assert (await device(pool, "s2"))["current_task_id"] == 2
    assert await pool.fetchval("SELECT serial FROM accounts WHERE username = 'u1'") == "s1"
    one = await task_row(pool, 1)
    assert (one["state"], one["status"], one["version"]) == ("running", 1, 3)
    assert (await task_row(pool, 2))["state"] == "dispatched"


def account_lists(*lists: tuple[str, list[str]]) -> list[NewEvent]:
    return [
        NewEvent(
            device_stream_id(serial),
            AccountsReported(
                serial=serial, agent_id="a1", accounts=[{"username": u} for u in users]
            ),
        )
        for serial, users in lists
    ]


async def accounts(pool: asyncpg.Pool) -> list[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT username, serial, source FROM accounts ORDER BY username")
    return [tuple(r) for r in rows]


async def test_account_lists_in_one_batch_end_as_one_list_per_transaction(
    pool: asyncpg.Pool,
) -> None:
    await append(pool, connected("s1", "s2", "s3"))
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO accounts (username, platform, serial, source)"
            " VALUES ('by_api', 'tiktok', 's3', 'api'), ('stale', 'tiktok', 's1', 'agent')"
        )
    lists = account_lists(
        ("s2", ["x", "y"]),
        ("s1", ["x", "w"]),  # x moves to s1; stale is gone
        ("s3", ["by_api", "v"]),  # by_api stays the API's
        ("s1", ["z", "w"]),  # x is gone with it
        ("s2", ["y", "u"]),
    )
    for new in lists:
        await append(pool, [new])
    alone = await accounts(pool)
    await pool.execute("DELETE FROM accounts WHERE source = 'agent'")
    await pool.execute("INSERT INTO accounts VALUES ('stale', 'tiktok', 's1', 'agent')")
    await append(pool, lists)
    assert (
        await accounts(pool)
        == alone
        == [
            ("by_api", "s3", "api"),
            ("u", "s2", "agent"),
            ("v", "s3", "agent"),
            ("w", "s1", "agent"),
            ("y", "s2", "agent"),
            ("z", "s1", "agent"),
        ]
    )


async def test_late_reports_failures_and_retries_in_one_batch(pool: asyncpg.Pool) -> None:
    """Lost, then the phone's reports (reopen, failure), then an automatic retry and a
    stop and delete of another task: the phone's hold and the retry columns follow."""
    await append(pool, connected("s1", "s2"))
    await append(pool, lifecycle(2, "s2")[:3])  # task 2 running on s2
    events = [
        *lifecycle(1, "s1")[:3],
        *on_task(
            1,
            TaskFailed(
                task_id=1, dispatch_id="run-1", reason="agent lost: a1 restarted", lost=True
            ),
            TaskReportLate(
                task_id=1,
                dispatch_id="run-1",
                report=late.STARTED,
                ended_by="lost",
                verdict=Verdict.REOPEN,
            ),
            TaskStarted(task_id=1, serial="s1", agent_id="a1", dispatch_id="run-1"),
            TaskFailed(task_id=1, dispatch_id="run-1", reason="caption box missing"),
        ),
        *on_task(2, TaskStopped(task_id=2), TaskDeleted(task_id=2)),
    ]
    await append(pool, events)
    one = await pool.fetchrow("SELECT * FROM tasks WHERE id = 1")
    assert (one["state"], one["ended_by"], one["reason"]) == (
        "failed",
        "failed",
        "caption box missing",
    )
    assert (one["reason_class"], one["retry_checked"], one["version"]) == ("other", False, 7)
    assert (await device(pool, "s1"))["last_task_id"] == 1
    # Stopped keeps its phone until the agent says the script ended.
    assert (await device(pool, "s2"))["current_task_id"] == 2

    await append(
        pool,
        [
            *on_task(
                1,
                TaskRetried(
                    task_id=1, retry_count=1, due_at=DUE, automatic=True, reason="back-off"
                ),
            ),
            *on_task(
                2,
                TaskReportLate(
                    task_id=2,
                    dispatch_id="run-2",
                    report=late.FAILED,
                    ended_by="deleted",
                    verdict=Verdict.RECORD,
                ),
            ),
        ],
    )
    one = await pool.fetchrow("SELECT * FROM tasks WHERE id = 1")
    assert (one["state"], one["wait_reason"], one["auto_retries"]) == ("pending", "back-off", 1)
    assert (one["retry_checked"], one["reason_class"], one["finished_at"]) == (True, None, None)
    two = await pool.fetchrow("SELECT deleted, version, state FROM tasks WHERE id = 2")
    assert tuple(two) == (True, 6, "failed")
    assert not (await device(pool, "s2"))["busy"]
    for task_id in (1, 2):
        await assert_rebuilt_from_its_events(pool, task_id)
    counts = await pool.fetch(STATUS_COUNTS)
    assert [tuple(r) for r in counts] == [(0, 1)]


async def test_dispatch_latency_reads_the_rows_as_they_were_before_the_batch(
    pool: asyncpg.Pool,
) -> None:
    await append(pool, connected("s1"))
    await append(pool, lifecycle(1, "s1")[:2])
    latencies: list[float] = []
    # The start and its completion in one batch: the completion's finish is not "ready".
    await append(pool, lifecycle(1, "s1")[2:], latencies)
    started = await pool.fetchval("SELECT started_at FROM tasks WHERE id = 1")
    assert latencies == [pytest.approx((started - DUE).total_seconds())]


async def test_rebuild_in_chunks_reproduces_the_live_rows(pool: asyncpg.Pool) -> None:
    await append(pool, connected("s1", "s2", "s3"))
    for task_id in range(1, 31):
        serial = f"s{task_id % 3 + 1}"
        events = lifecycle(task_id, serial)
        await append(pool, events[: task_id % 5 + 1])
    await append(pool, on_task(7, TaskDeleted(task_id=7)))
    snapshot = (
        "SELECT * FROM tasks ORDER BY id",
        "SELECT * FROM devices ORDER BY serial",
        "SELECT * FROM task_counts WHERE count <> 0 ORDER BY 1, 2, 3, 4",
    )
    before = [[dict(r) for r in await pool.fetch(sql)] for sql in snapshot]
    async with pool.acquire() as conn:
        assert await rebuild(conn, batch=7) == await conn.fetchval("SELECT count(*) FROM events")
    assert [[dict(r) for r in await pool.fetch(sql)] for sql in snapshot] == before
