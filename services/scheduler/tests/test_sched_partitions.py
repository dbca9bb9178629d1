"""The partitioned log: a phone's streams in one partition, gap-free positions per
partition, and writers of different partitions not waiting for each other."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from fleet_contracts.events import DeviceConnected, TaskCreated, TaskStopped
from fleet_contracts.subjects import device_stream_id, task_stream_id
from fleet_scheduler import partitions as parts
from fleet_scheduler.migrate import installed_partitions, migrate
from fleet_scheduler.store import Metadata, NewEvent, PostgresRecorder, init_connection
from fleet_scheduler.uow import PartitionNotLocked, unit_of_work

from .conftest import eventually

DUE = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
COUNT = 8


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(pg_dsn, init=init_connection, min_size=1, max_size=4) as p:
        async with p.acquire() as conn:
            await migrate(conn, COUNT)
        yield p


def serial_in(partition: int) -> str:
    """A serial whose partition is `partition`."""
    return next(s for i in range(10_000) if parts.of_serial(s := f"phone-{i}", COUNT) == partition)


def created(task_id: int, serial: str) -> NewEvent:
    return NewEvent(
        task_stream_id(task_id),
        TaskCreated(
            task_id=task_id, serial=serial, script_name="post", script_config={}, due_at=DUE
        ),
    )


def test_the_lock_order_takes_the_fleet_partition_last() -> None:
    assert parts.lock_order([0, 5, 2, 5, 0, 1]) == [1, 2, 5, 0]


async def test_python_and_sql_place_a_serial_in_the_same_partition(pool: asyncpg.Pool) -> None:
    rng = random.Random(7)
    serials = [f"{rng.getrandbits(64):x}" for _ in range(300)] + ["", "emulator-5554", "ä/ß"]
    rows = await pool.fetch("SELECT s, fleet_partition(s) AS p FROM unnest($1::text[]) s", serials)
    assert {r["s"]: r["p"] for r in rows} == {s: parts.of_serial(s, COUNT) for s in serials}
    assert {parts.of_serial(s, COUNT) for s in serials} == set(range(1, COUNT + 1))


async def test_the_count_is_fixed_when_the_log_is_installed(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await migrate(conn, 64) == []
        assert await installed_partitions(conn) == COUNT


async def test_a_phones_streams_share_its_partition_and_number_gap_free(
    pool: asyncpg.Pool,
) -> None:
    a, b = serial_in(3), serial_in(6)
    async with unit_of_work(pool) as uow:
        await uow.append(
            [
                NewEvent(device_stream_id(a), DeviceConnected(serial=a, agent_id="x", host="h")),
                created(1, a),
                created(2, b),
            ]
        )
    # A rolled-back append gives its positions back.
    with pytest.raises(RuntimeError):
        await _append_then_fail(pool, created(3, a))
    async with unit_of_work(pool) as uow:
        # The recorder finds task 1's partition from its first event.
        await uow.append([NewEvent(task_stream_id(1), TaskStopped(task_id=1))])
        await uow.append([created(4, a)])
    rows = await pool.fetch(
        "SELECT stream_id, partition, partition_position FROM events ORDER BY position"
    )
    assert [tuple(r) for r in rows] == [
        (device_stream_id(a), 3, 1),
        ("task-1", 3, 2),
        ("task-2", 6, 1),
        ("task-1", 3, 3),
        ("task-4", 3, 4),
    ]
    assert await pool.fetchval("SELECT partition FROM tasks WHERE id = 4") == 3
    ends = await pool.fetch("SELECT id, next_position FROM log_partitions WHERE id IN (3, 6)")
    assert sorted(tuple(r) for r in ends) == [(3, 4), (6, 1)]


async def test_a_task_outside_the_partitions_locked_is_not_appended_to(
    pool: asyncpg.Pool,
) -> None:
    a, b = serial_in(3), serial_in(6)
    async with unit_of_work(pool) as uow:
        await uow.append([created(1, a)])
    # A batch that chose its partitions from what a message said (b's), holding task 1:
    # appending to it would take partition 3's lock late, out of the one order.
    async with unit_of_work(pool, partitions=[parts.of_serial(b, COUNT)]) as uow:
        await uow.load_tasks([1])
        with pytest.raises(PartitionNotLocked, match="partition 3"):
            await uow.append([NewEvent(task_stream_id(1), TaskStopped(task_id=1))])
    assert await pool.fetchval("SELECT count(*) FROM events") == 1
    async with unit_of_work(pool, partitions=[3]) as uow:
        await uow.load_tasks([1])
        await uow.append([NewEvent(task_stream_id(1), TaskStopped(task_id=1))])
    assert await pool.fetchval("SELECT count(*) FROM events WHERE partition = 3") == 2


async def test_a_late_writer_reads_while_the_partitions_are_held_and_waits_to_append(
    pool: asyncpg.Pool,
) -> None:
    a = serial_in(2)
    holding, release, read = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold_every_partition() -> None:
        async with unit_of_work(pool) as uow:
            await uow.append([created(1, a)])
            holding.set()
            await release.wait()

    async def late_create() -> int:
        async with unit_of_work(pool, late=True) as uow:
            seen = int(await uow.conn.fetchval("SELECT count(*) FROM tasks"))
            read.set()
            await uow.append([created(2, a)])
            return seen

    async def waiting_for_a_lock() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
        )

    holder = asyncio.create_task(hold_every_partition())
    await holding.wait()
    late = asyncio.create_task(late_create())
    try:
        # It begins and reads while every partition is held (the holder's task not yet
        # committed), then waits for the partitions' locks at its append.
        await eventually(waiting_for_a_lock, what="the late writer waiting at its append")
        assert read.is_set() and not late.done()
    finally:
        release.set()
    assert await asyncio.wait_for(late, 5) == 0
    await holder
    positions = await pool.fetch(
        "SELECT stream_id, partition_position FROM events WHERE partition = 2 ORDER BY position"
    )
    assert [tuple(r) for r in positions] == [("task-1", 1), ("task-2", 2)]


async def test_streams_without_a_phone_go_to_the_fleet_partition(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await PostgresRecorder(conn).append(
            [NewEvent("schedule-1", TaskStopped(task_id=9))], Metadata()
        )
    assert await pool.fetchval("SELECT partition FROM events") == parts.FLEET


async def test_writers_of_other_partitions_do_not_wait_those_of_the_same_one_do(
    pool: asyncpg.Pool,
) -> None:
    a, b = serial_in(2), serial_in(5)
    a2 = next(s for i in range(10_000) if parts.of_serial(s := f"other-{i}", COUNT) == 2)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold_partition_2(task_id: int, serial: str) -> None:
        async with unit_of_work(pool, partitions=[2]) as uow:
            await uow.append([created(task_id, serial)])
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_partition_2(1, a))
    await holding.wait()
    # Another partition commits while partition 2 is held: a phone's event, and a task of
    # the same script, source and status as the held one (the counters are per partition,
    # so the two never upsert the same counter row) ...
    try:
        async with asyncio.timeout(5), unit_of_work(pool, partitions=[5]) as uow:
            await uow.append(
                [
                    NewEvent(
                        device_stream_id(b), DeviceConnected(serial=b, agent_id="x", host="h")
                    ),
                    created(2, b),
                ]
            )
    finally:
        release.set()  # never leave the holder (and the pool's teardown) waiting
    release.clear()
    # ... the same partition (and any writer of every partition) waits for it.
    holding.clear()
    holder = asyncio.create_task(hold_partition_2(3, a2))
    await holding.wait()
    same = asyncio.create_task(_create_in(pool, [2], 4, a2))
    every = asyncio.create_task(_create_in(pool, None, 5, b))
    await asyncio.sleep(0.5)
    waited = not same.done() and not every.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, same, every), 5)
    assert waited
    positions = await pool.fetch(
        "SELECT stream_id, partition_position FROM events WHERE partition = 2 ORDER BY position"
    )
    assert [tuple(r) for r in positions] == [("task-1", 1), ("task-3", 2), ("task-4", 3)]


async def _append_then_fail(pool: asyncpg.Pool, new: NewEvent) -> None:
    async with unit_of_work(pool) as uow:
        await uow.append([new])
        raise RuntimeError("roll back")


async def _create_in(
    pool: asyncpg.Pool, partitions: list[int] | None, task_id: int, serial: str
) -> None:
    async with unit_of_work(pool, partitions=partitions) as uow:
        await uow.append([created(task_id, serial)])


async def test_an_owner_locks_only_the_partitions_it_leases(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "UPDATE log_partitions SET owner = 'me', lease_expires = now() + interval '1 minute'"
        " WHERE id IN (1, 2)"
    )
    await pool.execute(
        "UPDATE log_partitions SET owner = 'me', lease_expires = now() - interval '1 second'"
        " WHERE id = 3"
    )
    async with unit_of_work(pool, partitions=[1, 2, 3, 4], owner="me") as uow:
        assert uow.partitions == frozenset({1, 2})
        assert uow.partition_count == COUNT
