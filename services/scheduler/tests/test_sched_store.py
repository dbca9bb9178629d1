"""The recorder contract, passed by the in-memory and the PostgreSQL recorder alike;
and the log tailed by position while many transactions append at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from fleet_contracts.events import TaskStopped
from fleet_scheduler.migrate import migrate, migration_files
from fleet_scheduler.store import (
    ConcurrencyError,
    InMemoryRecorder,
    Metadata,
    NewEvent,
    PostgresRecorder,
    Recorder,
    init_connection,
)


def stopped(stream: str, expected: int | None = None, task_id: int = 1) -> NewEvent:
    return NewEvent(stream, TaskStopped(task_id=task_id), expected_version=expected)


class RecorderContract:
    """Each `open()` is one transaction: all of it is kept, or none of it."""

    def open(self) -> asynccontextmanager:  # type: ignore[type-arg]
        raise NotImplementedError

    async def test_versions_count_up_per_stream(self) -> None:
        async with self.open() as rec:
            first = await rec.append([stopped("task-1", 0), stopped("task-2", 0)], Metadata("c"))
            second = await rec.append([stopped("task-1", 1)], Metadata("c", "cause"))
        assert [(e.stream_id, e.version) for e in first] == [("task-1", 1), ("task-2", 1)]
        assert second[0].version == 2
        assert second[0].metadata["correlation_id"] == "c"
        assert second[0].metadata["causation_id"] == "cause"
        assert first[0].position < first[1].position < second[0].position

    async def test_stale_expected_version_is_refused_and_nothing_is_written(self) -> None:
        async with self.open() as rec:
            await rec.append([stopped("task-1", 0)], Metadata())
        with pytest.raises(ConcurrencyError):
            async with self.open() as rec:
                await rec.append([stopped("task-2", 0), stopped("task-1", 0)], Metadata())
        async with self.open() as rec:
            assert await rec.read_stream("task-2") == []
            assert len(await rec.read_after(0, 100)) == 1

    async def test_any_version_appends_after_the_last(self) -> None:
        async with self.open() as rec:
            await rec.append([stopped("device-x"), stopped("device-x")], Metadata())
            rows = await rec.read_stream("device-x")
        assert [r.version for r in rows] == [1, 2]
        assert isinstance(rows[0].event(), TaskStopped)

    async def test_read_after_pages_in_position_order(self) -> None:
        async with self.open() as rec:
            for i in range(5):
                await rec.append([stopped(f"task-{i}", 0, i)], Metadata())
            page = await rec.read_after(0, 3)
            rest = await rec.read_after(page[-1].position, 10)
        assert [r.stream_id for r in page + rest] == [f"task-{i}" for i in range(5)]
        envelope = rest[-1].envelope()
        assert envelope.message_id == str(rest[-1].position)


class TestInMemoryRecorder(RecorderContract):
    @pytest.fixture(autouse=True)
    def _store(self) -> None:
        self.store = InMemoryRecorder()

    def open(self) -> asynccontextmanager:  # type: ignore[type-arg]
        @asynccontextmanager
        async def session() -> AsyncIterator[Recorder]:
            # All or nothing, like a transaction.
            before = list(self.store.rows)
            try:
                yield self.store
            except BaseException:
                self.store.rows[:] = before
                raise

        return session()


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


class TestPostgresRecorder(RecorderContract):
    @pytest.fixture(autouse=True)
    async def _store(self, pg_dsn: str) -> AsyncIterator[None]:
        self.conn = await _connect(pg_dsn)
        await migrate(self.conn)
        yield
        await self.conn.close()

    def open(self) -> asynccontextmanager:  # type: ignore[type-arg]
        @asynccontextmanager
        async def session() -> AsyncIterator[Recorder]:
            async with self.conn.transaction():
                yield PostgresRecorder(self.conn)

        return session()


async def test_migrations_are_safe_when_two_start_at_once(pg_dsn: str) -> None:
    a, b = await _connect(pg_dsn), await _connect(pg_dsn)
    applied = await asyncio.gather(migrate(a), migrate(b))
    bundled = len(migration_files())
    assert bundled >= 3
    # One of the two applied every migration, the other waited and found none to do.
    assert sorted(len(x) for x in applied) == [0, bundled]
    assert await a.fetchval("SELECT count(*) FROM schema_migrations") == bundled
    await a.close()
    await b.close()


async def test_concurrent_appenders_never_let_a_tailing_reader_skip_a_row(pg_dsn: str) -> None:
    setup = await _connect(pg_dsn)
    await migrate(setup)
    await setup.close()
    writers = 8
    per_writer = 40
    done = asyncio.Event()

    async def writer(n: int) -> None:
        conn = await _connect(pg_dsn)
        for i in range(per_writer):
            async with conn.transaction():
                await PostgresRecorder(conn).append(
                    [stopped(f"task-{n}"), stopped(f"task-{n}")], Metadata()
                )
                # Hold the transaction open a little so commits interleave late.
                await asyncio.sleep(0.001 * (i % 3))
        await conn.close()

    seen: list[int] = []

    async def tail() -> None:
        conn = await _connect(pg_dsn)
        position = 0
        while True:
            finished = done.is_set()
            rows = await PostgresRecorder(conn).read_after(position, 50)
            for row in rows:
                seen.append(row.position)
                position = row.position
            if finished and not rows:
                break
            await asyncio.sleep(0)
        await conn.close()

    reader = asyncio.create_task(tail())
    await asyncio.gather(*(writer(n) for n in range(writers)))
    done.set()
    await reader
    check = await _connect(pg_dsn)
    all_positions = [r[0] for r in await check.fetch("SELECT position FROM events ORDER BY 1")]
    await check.close()
    assert len(all_positions) == writers * per_writer * 2
    assert seen == all_positions  # every row, once, in order: none skipped


async def test_an_append_wakes_the_logs_followers_once_it_commits(pg_dsn: str) -> None:
    """Relays and stats caches of other schedulers listen for `fleet_events`: each
    appending transaction must send it, and only on commit."""
    listener, writer = await _connect(pg_dsn), await _connect(pg_dsn)
    await migrate(writer)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("fleet_events", lambda *args: heard.put_nowait(args[2]))
    try:
        async with writer.transaction():
            recorded = await PostgresRecorder(writer).append(
                [stopped("task-1"), stopped("task-1"), stopped("task-2", task_id=2)], Metadata()
            )
            await asyncio.sleep(0.2)
            assert heard.empty()  # not before the commit
        assert await asyncio.wait_for(heard.get(), 5) == "fleet_events"
        rows = await writer.fetch(
            "SELECT stream_id, version, position, partition, partition_position FROM events"
            " ORDER BY position"
        )
        # What the append answered is what the log holds, row by row, in batch order.
        assert [
            (r.stream_id, r.version, r.position, r.partition, r.partition_position)
            for r in recorded
        ] == [tuple(row) for row in rows]
        # Each partition's positions run on from 1 in the order of the batch.
        by_partition: dict[int, list[int]] = {}
        for row in rows:
            by_partition.setdefault(row["partition"], []).append(row["partition_position"])
        assert all(p == list(range(1, len(p) + 1)) for p in by_partition.values())
    finally:
        await listener.close()
        await writer.close()


async def test_jsonb_values_come_back_as_they_went_in(pg_dsn: str) -> None:
    """A script_config is the operator's: integers past 64 bits stay exact, non-string
    keys become strings (as JSON has them), and text PostgreSQL cannot store (a lone
    surrogate) is refused, not written in some other form."""
    conn = await _connect(pg_dsn)
    try:
        value = {"big": 2**80, "neg": -(2**70), "f": 0.1, "s": "é ✓", "n": None, "l": [1, "a"]}
        got = await conn.fetchval("SELECT $1::jsonb", value)
        assert got == value
        assert isinstance(got["big"], int)
        assert await conn.fetchval("SELECT $1::jsonb", {1: "one"}) == {"1": "one"}
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetchval("SELECT $1::jsonb", {"s": "\ud800"})
    finally:
        await conn.close()
