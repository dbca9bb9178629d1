"""Lists and stats that stay flat: the counters kept by triggers on `tasks` (migration
090) equal a count over the table after every kind of write; `ListTasks` answers, for
every filter combination, exactly the rows and total a plain query over the table
would; stats are served from memory yet always count a commit this scheduler made or
heard of."""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import pytest

from fleet_contracts.codes import TaskSource, TaskStatus
from fleet_contracts.commands import CreateTasks
from fleet_contracts.queries import GetStats, ListTasks
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler import migrate as migrate_module
from fleet_scheduler import partitions as parts
from fleet_scheduler import queries
from fleet_scheduler.app import Scheduler
from fleet_scheduler.migrate import installed_partitions, migrate
from fleet_scheduler.task_stats import COUNTS, StatsSnapshot

from .conftest import Bus, FakeAgent, eventually

SERIAL_TRUTH = (
    "SELECT serial, script_name, source, status, count(*) AS count FROM tasks"
    " WHERE NOT deleted GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
SERIAL_COUNTS = (
    "SELECT serial, script_name, source, status, count FROM task_serial_counts"
    " WHERE count <> 0 ORDER BY 1, 2, 3, 4"
)
# `task_counts` is kept per partition (migration 110), from the partition of the tasks
# themselves.
KIND_TRUTH = (
    "SELECT fleet_partition(serial), script_name, source, status, count(*) AS count FROM tasks"
    " WHERE NOT deleted GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
KIND_COUNTS = (
    "SELECT partition, script_name, source, status, count FROM task_counts"
    " WHERE count <> 0 ORDER BY 1, 2, 3, 4"
)

# Serials, scripts, sources and statuses spread unevenly over the ids, so some filter
# combinations match nothing and some match old rows only.
FILL = """
INSERT INTO tasks (id, serial, script_name, script_config, source, state, status,
                   created_at, due_at, version, deleted)
SELECT i, 's' || (i % $3), (ARRAY['post', 'follow', 'like'])[1 + (i / 7) % 3], '{}'::jsonb,
       CASE WHEN i % 5 = 0 OR i < $1 + 40 THEN 'ui' ELSE 'api' END,
       (ARRAY['pending', 'running', 'completed', 'failed'])[1 + (i / 3) % 4],
       (i / 3) % 4, now(), now(), 1, i % 11 = 0
FROM generate_series($1::bigint, $2::bigint) i
"""


async def assert_counters_true(db: asyncpg.Connection) -> None:
    for counts, truth in ((SERIAL_COUNTS, SERIAL_TRUTH), (KIND_COUNTS, KIND_TRUTH)):
        assert [tuple(r) for r in await db.fetch(counts)] == [
            tuple(r) for r in await db.fetch(truth)
        ]


async def test_counters_follow_every_kind_of_write(db: asyncpg.Connection) -> None:
    await migrate(db)
    await db.execute(FILL, 1, 2000, 37)
    await assert_counters_true(db)
    assert await db.fetchval("SELECT sum(count) FROM task_counts") == await db.fetchval(
        "SELECT count(*) FROM tasks WHERE NOT deleted"
    )
    # Moves between statuses, deletions, undeletions, a serial and a script changed,
    # rows removed: one statement each, many rows each.
    for sql in (
        "UPDATE tasks SET status = 2, state = 'completed' WHERE status IN (0, 1) AND id % 3 = 0",
        "UPDATE tasks SET deleted = true WHERE id % 13 = 0",
        "UPDATE tasks SET deleted = false WHERE id % 22 = 0",
        "UPDATE tasks SET serial = 's-moved', script_name = 'other' WHERE id BETWEEN 100 AND 180",
        "UPDATE tasks SET source = 'api' WHERE id < 60",
        "UPDATE tasks SET version = version + 1 WHERE id < 500",
        "DELETE FROM tasks WHERE id % 17 = 0",
    ):
        await db.execute(sql)
        await assert_counters_true(db)
    async with db.transaction():
        await db.execute("UPDATE tasks SET status = 3 WHERE id = 1")
        await db.execute("UPDATE tasks SET status = 0 WHERE id = 1")
        await db.execute(FILL, 5000, 5100, 5)
    await assert_counters_true(db)
    # A rebuild empties the tasks with TRUNCATE: the counters start over with them.
    await db.execute("TRUNCATE tasks")
    for table in ("task_counts", "task_serial_counts"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0


def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    where, args = ["NOT deleted"], []
    for column, value in filters.items():
        args.append(value)
        where.append(f"{column} = ${len(args)}")
    return " AND ".join(where), args


async def test_list_answers_the_plain_query_for_every_filter(
    scheduler: Scheduler, bus: Bus, db: asyncpg.Connection
) -> None:
    await db.execute(FILL, 1, 700, 4)
    values: dict[str, Any] = {
        "status": TaskStatus.FAILED,
        "serial": "s1",
        "script_name": "like",
        "source": TaskSource.UI,
    }
    for n in range(len(values) + 1):
        for names in itertools.combinations(values, n):
            filters = {name: values[name] for name in names}
            clause, args = _where(
                {k: int(v) if k == "status" else str(v) for k, v in filters.items()}
            )
            expected = [
                r["id"]
                for r in await db.fetch(
                    f"SELECT id FROM tasks WHERE {clause} ORDER BY id DESC", *args
                )
            ]
            got: list[int] = []
            for page in range(1, len(expected) // 30 + 3):
                data = (await bus.query(ListTasks(page=page, page_size=30, **filters))).data
                assert data["total"] == len(expected), filters
                got += [t["id"] for t in data["tasks"]]
            assert got == expected, filters
    # The filters of the API's own example still answer the whole rows.
    data = (await bus.query(ListTasks(serial="s1", status=TaskStatus.PENDING))).data
    assert data["tasks"] and data["tasks"][0]["serial"] == "s1"
    assert data["tasks"][0]["status_name"] == "pending"


async def test_a_page_reads_its_groups_ranges_on_a_table_not_vacuumed(
    db: asyncpg.Connection,
) -> None:
    """Each group of a page is read from its own index range, never by walking the
    primary key backwards through every task, also when no page is all-visible (a live
    table between vacuums), where the planner once preferred the walk."""
    await migrate(db)
    await db.execute(FILL, 1, 60_000, 1000)
    await db.execute("UPDATE tasks SET version = version + 1 WHERE id % 40 = 0")
    await db.execute("ANALYZE tasks")
    assert await db.fetchval("SELECT relallvisible FROM pg_class WHERE relname = 'tasks'") == 0
    cases = [
        (queries.LIST_BY_GROUP, "tasks_group", (None, None, None, None)),
        (queries.LIST_BY_GROUP, "tasks_group", (None, "like", None, None)),
        (queries.LIST_BY_GROUP, "tasks_group", (3, None, "ui", None)),
        (queries.LIST_BY_SERIAL, "tasks_serial_group", (None, None, None, "s7")),
        (queries.LIST_BY_SERIAL, "tasks_serial_group", (2, "post", None, "s7")),
    ]
    for sql, index, filters in cases:
        plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + sql, *filters, 60, 20, 40))
        assert index in plan, (filters, plan)
        assert "Backward using tasks_pkey" not in plan, (filters, plan)


async def test_stats_after_a_create_through_the_same_scheduler_count_it(
    bus: Bus, agent: FakeAgent
) -> None:
    serials = ["device_serial_1", "device_serial_2", "device_serial_3"]
    total = (await bus.query(GetStats())).data["total"]
    for _ in range(8):
        cmd = CreateTasks(request=CreateTaskRequest(serials=serials, script_name="post"))
        assert (await bus.command(cmd)).ok
        stats = (await bus.query(GetStats())).data
        total += 3
        assert stats["total"] == total
        assert stats["pending"] + stats["running"] == total


async def test_stats_hear_commits_of_other_schedulers(
    scheduler: Scheduler, bus: Bus, db: asyncpg.Connection
) -> None:
    assert (await bus.query(GetStats())).data["total"] == 0
    # Another scheduler's commit: rows written and NOTIFY sent, nothing said in-process.
    async with db.transaction():
        await db.execute(FILL, 1, 9, 3)
        await db.execute("SELECT pg_notify('fleet_events', '')")
    expected = await db.fetchval("SELECT count(*) FROM tasks WHERE NOT deleted")

    async def heard() -> bool:
        return bool((await bus.query(GetStats())).data["total"] == expected)

    await eventually(heard, within=5, what="stats counting another scheduler's commit")


async def test_stats_snapshot_is_served_from_memory_until_marked_stale(
    scheduler: Scheduler, db: asyncpg.Connection
) -> None:
    assert scheduler.ctx is not None
    pool = scheduler.ctx.pool
    snapshot = StatsSnapshot()
    snapshot.listening = True
    first = await snapshot.get(pool)
    await db.execute(FILL, 1, 9, 3)
    assert await snapshot.get(pool) is first  # no read: nothing marked it stale
    snapshot.stale()
    assert (await snapshot.get(pool)).total == first.total + 9  # ids 1..9: none deleted
    # Not listening (the LISTEN connection lost): nothing is cached.
    snapshot.listening = False
    assert await snapshot.get(pool) is not await snapshot.get(pool)


async def assert_totals_are_the_table(db: asyncpg.Connection) -> None:
    """What readers see (sums over partitions) is a count over the table."""
    truth = {
        r["status"]: r["count"]
        for r in await db.fetch(
            "SELECT status, count(*) AS count FROM tasks WHERE NOT deleted GROUP BY 1"
        )
    }
    sums = await db.fetch(
        "SELECT status, sum(count)::bigint AS count FROM task_counts GROUP BY 1"
        " HAVING sum(count) <> 0"
    )
    assert {r["status"]: r["count"] for r in sums} == truth
    assert {r["status"]: r["count"] for r in await db.fetch(COUNTS) if r["count"]} == truth


async def test_counters_are_kept_per_partition(db: asyncpg.Connection) -> None:
    await migrate(db)
    count = await installed_partitions(db)
    a, pa = "phone-a", parts.of_serial("phone-a", count)
    b = next(s for i in range(1000) if parts.of_serial(s := f"phone-{i}", count) != pa)
    pb = parts.of_serial(b, count)
    insert = (
        "INSERT INTO tasks (id, serial, script_name, script_config, source, state, status,"
        " created_at, due_at, version, deleted)"
        " SELECT i, $3, 'post', '{}'::jsonb, 'api', 'pending', 0, now(), now(), 1, false"
        " FROM generate_series($1::bigint, $2::bigint) i"
    )
    await db.execute(insert, 1, 6, a)
    await db.execute(insert, 7, 10, b)
    # The same (script, source, status) in two partitions: a row under each, so writers
    # of the two partitions never upsert the same counter row.
    rows = await db.fetch("SELECT partition, count FROM task_counts ORDER BY 1")
    assert [tuple(r) for r in rows] == sorted([(pa, 6), (pb, 4)])
    await assert_counters_true(db)
    await assert_totals_are_the_table(db)
    for sql in (
        # One statement moving tasks of both partitions, then each kind of removal.
        "UPDATE tasks SET status = 2, state = 'completed' WHERE id IN (1, 2, 7)",
        "UPDATE tasks SET status = 3, state = 'failed' WHERE id IN (3, 8)",
        "UPDATE tasks SET deleted = true WHERE id IN (4, 9)",
        "DELETE FROM tasks WHERE id IN (5, 10)",
        # A task whose serial changes changes partition: its count moves with it.
        f"UPDATE tasks SET serial = '{b}' WHERE id = 6",
    ):
        await db.execute(sql)
        await assert_counters_true(db)
        await assert_totals_are_the_table(db)
    by_partition = await db.fetch(
        "SELECT partition, sum(count)::bigint AS count FROM task_counts GROUP BY 1 ORDER BY 1"
    )
    assert {r["partition"]: r["count"] for r in by_partition} == {pa: 3, pb: 3}


async def test_the_partition_migration_refills_the_counters(
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = migrate_module.migration_files()
    monkeypatch.setattr(
        migrate_module, "migration_files", lambda: [m for m in everything if m[0] < 110]
    )
    await migrate(db)
    await db.execute(FILL, 1, 2000, 37)
    # A (script, status) whose tasks are all gone: a zero row `fleet_tasks_by_script`
    # still reports.
    await db.execute("DELETE FROM tasks WHERE script_name = 'like' AND status = 3")
    scripts_before = await db.fetch(
        "SELECT script_name, status, count FROM task_script_stats ORDER BY 1, 2"
    )
    assert ("like", 3, 0) in [tuple(r) for r in scripts_before]
    monkeypatch.setattr(migrate_module, "migration_files", lambda: everything)
    assert await migrate(db) == [m[0] for m in everything if m[0] >= 110]
    await assert_counters_true(db)
    await assert_totals_are_the_table(db)
    # Per script and status, as /metrics reads them: from `task_counts` since 140.
    scripts_after = await db.fetch(
        "SELECT script_name, status, sum(count)::bigint AS count FROM task_counts"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert [tuple(r) for r in scripts_after] == [tuple(r) for r in scripts_before]
