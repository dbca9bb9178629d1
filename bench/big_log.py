"""A log of 1,000,000 tasks: do reads stay flat, and does the scheduler start fast?

Every service a process (one scheduler, the gateway, NATS, PostgreSQL). A few real
tasks are made through REST on simulated phones (one completed, one failed, one
waiting for its start_time); their events and read-model rows are the templates. The
log is then grown set-wise inside PostgreSQL (INSERT ... SELECT over generate_series,
no row crosses the wire) with copies of those histories: new ids, 1,000 serials, three
scripts, both sources, 60 % completed / 10 % failed / 30 % pending. Events and task
rows are written together, so the counters the triggers keep are the ones the API
reads, and `rebuild-read-models` over the grown log gives the same read models.

Measured at `small` and at `big` tasks, through the gateway: list (page 3 of 20),
filtered lists (status + serial, script_name, source) and stats, p50 / p99 one request
at a time and p99 with 8 in flight; `rebuild-read-models` at `rebuild_at` tasks; the
scheduler's restart-to-ready (process start until it answers `query.ping`) with the
big log; resident memory of each process.

`python -m bench.big_log [big [rebuild_at]]` prints the table (`rebuild_at` 0: no
rebuild); `make bench` includes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import psutil
from nats.aio.client import Client as NatsClient

from bench import limits
from bench.scratch import scratch
from bench.system import Client, Row, bench_stack, pct, running, table
from fleet_contracts.codes import TaskSource, TaskStatus
from fleet_contracts.queries import QUERY_SUBJECTS, GetStats, ListTasks, Ping, Query
from fleet_devstack.stack import ServiceProcess, Stack

SERIALS = 1000
SCRIPTS = ("post", "follow", "like")
# Of every 20 copies: 12 completed, 2 failed, 6 pending.
MIX = ((12, "completed"), (2, "failed"), (6, "pending"))


@dataclass(frozen=True)
class Sizes:
    small: int = 1_000
    big: int = 1_000_000
    rebuild_at: int = 20_000
    samples: int = 1000


BIG = Sizes()
SMALL = Sizes(small=200, big=2_000, rebuild_at=1_000, samples=30)


async def seed(conn: asyncpg.Connection, templates: dict[str, int], upto: int) -> int:
    """Grow the log to `upto` tasks with copies of the template tasks' histories;
    returns how many were added. Run with no scheduler attached (nothing else writes)."""
    have = await conn.fetchval("SELECT count(*) FROM tasks")
    add = upto - have
    if add <= 0:
        return 0
    base = await conn.fetchval("SELECT COALESCE(max(id), 0) + 1 FROM tasks")
    # Which template copy i takes, its serial, script and source, as SQL on i.
    cases, start = [], 0
    for share, kind in MIX:
        cases.append(f"WHEN i % 20 < {start + share} THEN {templates[kind]}")
        start += share
    template = f"(CASE {' '.join(cases)} END)"
    serial = f"'device_serial_' || (1 + i % {SERIALS})"
    script = f"(ARRAY{list(SCRIPTS)!r})[1 + (i / {SERIALS}) % {len(SCRIPTS)}]"
    source = "(CASE WHEN i % 10 = 3 THEN 'ui' ELSE 'api' END)"
    copies = f"(SELECT i, {base}::bigint + i AS id, {template} AS template, {serial} AS serial,"
    copies += f" {script} AS script_name, {source} AS source FROM generate_series(0, {add - 1}) i)"
    overrides = (
        "jsonb_strip_nulls(jsonb_build_object("
        "'task_id', CASE WHEN e.data ? 'task_id' THEN c.id END,"
        "'serial', CASE WHEN e.data ? 'serial' THEN c.serial END,"
        "'script_name', CASE WHEN e.data ? 'script_name' THEN c.script_name END,"
        "'source', CASE WHEN e.data ? 'source' THEN c.source END))"
    )
    columns = [
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'tasks' AND is_generated = 'NEVER' ORDER BY ordinal_position"
        )
    ]
    replaced = {"id": "c.id", "serial": "c.serial", "script_name": "c.script_name"}
    replaced["source"] = "c.source"
    picked = ", ".join(replaced.get(col, f"t.{col}") for col in columns)
    async with conn.transaction():
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        await conn.execute(
            "INSERT INTO events (stream_id, version, type, data, metadata, recorded_at,"
            " partition, partition_position)"
            f" SELECT 'task-' || c.id, e.version, e.type, e.data || {overrides}, e.metadata,"
            " e.recorded_at, fleet_partition(c.serial), l.next_position + row_number()"
            " OVER (PARTITION BY fleet_partition(c.serial) ORDER BY c.i, e.version)"
            f" FROM {copies} c JOIN events e ON e.stream_id = 'task-' || c.template"
            " JOIN log_partitions l ON l.id = fleet_partition(c.serial)"
            " ORDER BY c.i, e.version"
        )
        await conn.execute(
            "UPDATE log_partitions l SET next_position = m.last FROM (SELECT partition,"
            " max(partition_position) AS last FROM events GROUP BY 1) m WHERE l.id = m.partition"
        )
        await conn.execute(
            f"INSERT INTO tasks ({', '.join(columns)}) SELECT {picked}"
            f" FROM {copies} c JOIN tasks t ON t.id = c.template"
        )
        await conn.execute("SELECT setval('task_ids', (SELECT max(id) FROM tasks))")
        # The copies are not for EVENTS (the relay would spend minutes publishing them):
        # the relay's record says they were sent, its stream sequence unchanged.
        await conn.execute(
            "UPDATE relay_position SET position = (SELECT max(position) FROM events) WHERE id = 1"
        )
        await conn.execute(
            "UPDATE relay_partitions r SET position = l.next_position"
            " FROM log_partitions l WHERE l.id = r.partition"
        )
    await conn.execute("VACUUM ANALYZE tasks")
    await conn.execute("VACUUM ANALYZE events")
    return int(add)


COUNTER_CHECKS = (
    (
        "SELECT serial, script_name, source, status, count FROM task_serial_counts"
        " WHERE count <> 0 ORDER BY 1, 2, 3, 4",
        "SELECT serial, script_name, source, status, count(*) FROM tasks WHERE NOT deleted"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    ),
    # Kept per partition (migration 110): the seed's tasks span every partition, so its
    # set-wise inserts must have counted each under its own.
    (
        "SELECT partition, script_name, source, status, count FROM task_counts"
        " WHERE count <> 0 ORDER BY 1, 2, 3, 4",
        "SELECT partition, script_name, source, status, count(*) FROM tasks WHERE NOT deleted"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    ),
)


async def counters(conn: asyncpg.Connection) -> list[list[tuple[Any, ...]]]:
    """The counters the API reads, after checking they equal a count over the table."""
    found = []
    for counted, truth in COUNTER_CHECKS:
        kept = [tuple(r) for r in await conn.fetch(counted)]
        if kept != [tuple(r) for r in await conn.fetch(truth)]:
            raise RuntimeError("the counters disagree with a count over the table")
        found.append(kept)
    return found


async def make_templates(client: Client, media: str) -> dict[str, int]:
    """One completed, one failed and one waiting task, made through REST."""
    later = (datetime.now(UTC) + timedelta(hours=6)).strftime("%H:%M")
    ok = {"material_list": [media], "upload_wait_time": 0}
    missing = {"material_list": ["/nonexistent/clip.mp4"], "upload_wait_time": 0}
    done = (await client.create(["device_serial_1"], config=ok))[0]
    failed = (await client.create(["device_serial_2"], config=missing))[0]
    pending = (await client.create(["device_serial_3"], config=ok, start_time=later))[0]
    for task_id, status in ((done, "completed"), (failed, "failed")):
        for _ in range(600):
            task = await client.call("GET", f"/task/{task_id}")
            if task["status_name"] == status:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"template task {task_id} never {status}: {task}")
    return {"completed": done, "failed": failed, "pending": pending}


async def _ping_after_start(svc: ServiceProcess, nats_url: str) -> float:
    """Start `svc` (a scheduler) and time until it answers `query.ping`."""
    nc = await nats.connect(nats_url)
    try:
        start = time.perf_counter()
        await asyncio.to_thread(svc.start)
        while True:
            if not svc.running:
                raise RuntimeError(f"scheduler exited: {svc.output()[-2000:]}")
            try:
                await nc.request(QUERY_SUBJECTS[Ping], Ping().to_bytes(), timeout=0.05)
                return time.perf_counter() - start
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.005)
    finally:
        await nc.close()


async def _import_seconds() -> float:
    """A fresh interpreter importing the scheduler: the part of a start no log changes."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import fleet_scheduler.__main__"
    )
    await proc.wait()
    return time.perf_counter() - start


async def _rebuild_seconds(stack: Stack, limit: float) -> float | None:
    env = {**stack.base_env(), "FLEET_LOG_LEVEL": "WARNING"}
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet_scheduler",
        "rebuild-read-models",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"rebuild-read-models failed: {err.decode()[-2000:]}")
    return time.perf_counter() - start


def _rss(pid: int | None, children: bool = False) -> str:
    if not pid:
        return "-"
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)] if children else [proc]
    total = 0
    for each in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a backend that just ended
            total += each.memory_info().rss
    return f"{total / 2**20:.0f} MiB"


def _ms(values: list[float]) -> str:
    return f"{pct(values, 0.5) * 1000:.1f} / {pct(values, 0.99) * 1000:.1f} ms"


READS: tuple[tuple[str, str, Query], ...] = (
    ("list", "/task?page=3&page_size=20", ListTasks(page=3, page_size=20)),
    (
        "list status+serial",
        "/task?status=0&serial=device_serial_7",
        ListTasks(status=TaskStatus.PENDING, serial="device_serial_7"),
    ),
    ("list script_name", "/task?script_name=like", ListTasks(script_name="like")),
    ("list source", "/task?source=ui", ListTasks(source=TaskSource.UI)),
    ("stats", "/task/stats", GetStats()),
)


async def _asked(nc: NatsClient, query: Query, samples: int) -> list[float]:
    """The scheduler's answer alone: the query's NATS request, no gateway."""
    took = []
    for _ in range(samples):
        start = time.perf_counter()
        await nc.request(QUERY_SUBJECTS[type(query)], query.to_bytes(), timeout=5)
        took.append(time.perf_counter() - start)
    return took


async def _reads(
    session: aiohttp.ClientSession, base: str, nats_url: str, samples: int, size: str
) -> list[Row]:
    rows = []
    nc = await nats.connect(nats_url)
    try:
        for name, path, query in READS:
            url = f"{base}{path}"
            await limits.hammer(session, url, min(50, samples), 1)  # warm: plans, caches
            alone = await limits.hammer(session, url, samples, 1)
            crowd = await limits.hammer(session, url, samples, 8)
            direct = await _asked(nc, query, samples)
            rows.append(
                (
                    f"{name} p50 / p99, {size}",
                    _ms(alone),
                    f"REST one at a time; p99 {pct(crowd, 0.99) * 1000:.1f} ms with 8 in flight;"
                    f" the scheduler alone (NATS request) {_ms(direct)}",
                )
            )
    finally:
        await nc.close()
    return rows


async def run(sizes: Sizes = BIG, data_dir: Path | None = None) -> list[Row]:
    async with scratch("fleet-big-log-", data_dir) as root:  # about 5 GB at a million tasks
        stack, media = bench_stack(root, 3, metrics=False)
        async with running(stack):
            return await _measure(stack, sizes, str(media))


async def _measure(stack: Stack, sizes: Sizes, media: str) -> list[Row]:
    rows: list[Row] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = Client(session, stack.api_url)
        for _ in range(600):
            if (await client.call("GET", "/device", params={"online": "true"}))["total"] >= 3:
                break
            await asyncio.sleep(0.1)
        templates = await make_templates(client, media)
        await asyncio.sleep(2.0)  # the automatic-retry loop looks once at the failure
        for agent in stack.agents.values():
            await asyncio.to_thread(agent.stop)
        stack.agents.clear()  # stopped for good: readiness no longer waits on them
        scheduler = stack.schedulers[0]
        conn = await asyncpg.connect(stack.database_url)
        postmaster = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).ppid()
        try:

            async def grown(upto: int) -> str:
                await asyncio.to_thread(scheduler.stop)
                start = time.perf_counter()
                added = await seed(conn, templates, upto)
                took = time.perf_counter() - start
                await counters(conn)
                return f"{added:,} tasks added in {took:.1f} s ({added / took:,.0f}/s)"

            async def ready(what: str) -> float:
                took = await _ping_after_start(scheduler, stack.nats.url)
                await asyncio.to_thread(stack.wait_ready, 120)
                events = await conn.fetchval("SELECT max(position) FROM events")
                imports = await _import_seconds()
                rows.append(
                    (
                        f"scheduler restart to ready, {what}",
                        f"{took:.2f} s",
                        f"{events:,} events; importing its modules alone takes {imports:.2f} s",
                    )
                )
                return took

            await grown(sizes.small)
            await ready(f"{sizes.small:,} tasks")
            rows += await _reads(
                session, client.base, stack.nats.url, sizes.samples, f"{sizes.small:,} tasks"
            )

            if sizes.rebuild_at > 0:
                await grown(sizes.rebuild_at)
                events = await conn.fetchval("SELECT count(*) FROM events")
                before = await counters(conn)
                took = await _rebuild_seconds(stack, 300)
                # The copies' events, replayed, give the rows that were seeded beside them.
                if took is not None and await counters(conn) != before:
                    raise RuntimeError("the rebuilt read models differ from the seeded ones")
                rows.append(
                    (
                        f"rebuild-read-models, {sizes.rebuild_at:,} tasks",
                        "> 300 s (stopped)" if took is None else f"{took:.1f} s",
                        f"{events:,} events, {events / took:,.0f} events/s"
                        if took
                        else f"{events:,} events",
                    )
                )
                if took is None:  # the read models are half rebuilt: make them whole again
                    await conn.execute("TRUNCATE tasks")
                    raise RuntimeError(
                        "rebuild stopped after 300 s: rerun with a smaller rebuild_at"
                    )

            note = await grown(sizes.big)
            rows.append((f"seed to {sizes.big:,} tasks", note, "events and read models, set-wise"))
            await ready(f"{sizes.big:,} tasks")
            rows += await _reads(
                session, client.base, stack.nats.url, sizes.samples, f"{sizes.big:,} tasks"
            )
            total = (await client.call("GET", "/task/stats"))["total"]
            rows.append(("tasks not deleted (stats)", f"{total:,}", "the log as measured"))
        finally:
            await conn.close()
    nats_proc = getattr(stack.nats, "proc", None)
    api_rss = _rss(stack.api.pid if stack.api else None)
    pg_rss = _rss(postmaster, True)
    rows.append(
        (
            f"resident memory at {sizes.big:,} tasks",
            f"scheduler {_rss(scheduler.pid, True)} (its relay's process included),"
            f" gateway {api_rss}",
            f"NATS {_rss(nats_proc.pid if nats_proc else None)}; PostgreSQL, every process"
            f" summed (shared buffers counted in each) {pg_rss}",
        )
    )
    return rows


async def section(sizes: Sizes = BIG) -> str:
    """This benchmark as a section of `make bench`'s report."""
    return table(f"A log of {sizes.big:,} tasks", await run(sizes))


async def _main(args: list[int]) -> None:
    big, rebuild_at = (args + [BIG.big, BIG.rebuild_at][len(args) :])[:2]
    print(await section(Sizes(big=big, rebuild_at=rebuild_at)))


if __name__ == "__main__":
    from fleet_runtime.logs import configure

    configure("bench", "WARNING")
    asyncio.run(_main([int(a) for a in sys.argv[1:3]]))
