"""The whole system measured: every service a process, driven through REST.

Scenarios (sizes from `Scale`): tasks created per second through REST (100 serials a
call); end-to-end tasks per second from create to completed on N simulated devices with
zero-length scripts, and the CPU time that flood cost every process of ours (NATS,
PostgreSQL with all its backends, gateway, scheduler(s), agent) per task; dispatch
latency (due -> agent start) p50 / p99; list and stats latency p50 / p99 with the log
holding `log_tasks` tasks; resident memory of the scheduler and the gateway; and the raw
limits of the machine in the same run.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench import limits, proc
from bench.cputime import per_task, ratio, spent_seconds
from bench.histograms import Buckets, bucket_bound, scrape_buckets, share_within
from bench.scratch import scratch
from fleet_devstack import free_port
from fleet_devstack.stack import AgentSpec, Stack, StackConfig

Row = tuple[str, str, str]


@dataclass(frozen=True)
class Scale:
    devices: int = 1000
    e2e_tasks: int = 20_000
    log_tasks: int = 100_000
    latency_samples: int = 2000
    raw_publishes: int = 20_000
    raw_inserts: int = 50_000
    raw_requests: int = 5000


BIG = Scale()
SMALL = Scale(
    devices=20,
    e2e_tasks=200,
    log_tasks=1000,
    latency_samples=100,
    raw_publishes=1000,
    raw_inserts=2000,
    raw_requests=300,
)


def pct(values: list[float], q: float) -> float:
    """The `q` quantile; NaN when there is nothing to rank (every task of a scenario
    failed before it started), so the table says so instead of the run dying."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dispatch_waits(tasks: list[dict[str, Any]]) -> list[float]:
    """Seconds from ready (due, device free) to started, per task."""
    by_device: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        by_device.setdefault(task["serial"], []).append(task)
    waits: list[float] = []
    for runs in by_device.values():
        runs.sort(key=lambda t: t["started_at"])
        free_since: datetime | None = None
        for task in runs:
            ready = datetime.fromisoformat(task["due_at"])
            if free_since is not None:
                ready = max(ready, free_since)
            started = datetime.fromisoformat(task["started_at"])
            waits.append(max(0.0, (started - ready).total_seconds()))
            if task["finished_at"]:
                free_since = datetime.fromisoformat(task["finished_at"])
    return waits


def ms(seconds: float) -> str:
    return "none started" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


@dataclass(frozen=True)
class Flood:
    """One end-to-end flood: create every task through REST, wait until all have ended."""

    ids: list[int]
    create_seconds: float
    seconds: float  # first create -> last task ended
    completed: int
    failed: int
    cpu_seconds: dict[str, float]  # spent by each group of our processes over the flood
    client_cpu_seconds: float  # the bench's own HTTP client, not counted as ours

    @property
    def rate(self) -> float:
        return len(self.ids) / self.seconds

    @property
    def create_rate(self) -> float:
        return len(self.ids) / self.create_seconds

    @property
    def cpu_per_task(self) -> float:
        return per_task(sum(self.cpu_seconds.values()), len(self.ids))


@dataclass
class Result:
    rows: list[Row]
    completed: int
    failed: int
    created: int
    flood: Flood


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = f"{base}/api/v1"

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            body = await resp.json()
            if body["code"] != 0:
                raise RuntimeError(f"{method} {path}: {resp.status} {body}")
            return body["data"]

    async def create(self, serials: list[str], **extra: Any) -> list[int]:
        body = {"serials": serials, "script_name": "post", "script_config": extra.pop("config")}
        data = await self.call("POST", "/task", json={**body, **extra})
        return list(data["task_ids"])


async def _create_many(
    client: Client, serials: list[str], total: int, config: dict[str, Any], **extra: Any
) -> tuple[list[int], float]:
    """`total` tasks in calls of (up to) 100 serials, 4 calls in flight; ids, seconds."""
    size = min(100, len(serials))  # a serial may appear once per call
    batches = [
        [serials[(i + j) % len(serials)] for j in range(min(size, total - i))]
        for i in range(0, total, size)
    ]
    ids: list[int] = []
    sem = asyncio.Semaphore(4)

    async def one(batch: list[str]) -> None:
        async with sem:
            ids.extend(await client.create(batch, config=config, **extra))

    start = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    return ids, time.perf_counter() - start


async def _finished(client: Client, count: int) -> dict[str, int]:
    """Poll stats until `count` tasks have ended; the stats then."""
    while True:
        stats: dict[str, int] = await client.call("GET", "/task/stats")
        if stats["completed"] + stats["failed"] >= count:
            return stats
        await asyncio.sleep(0.05)


def bench_stack(
    root: Path, devices: int, metrics: bool = True, schedulers: int = 1
) -> tuple[Stack, Path]:
    """A stack of `devices` instant simulated phones under `root`, and a media file."""
    media = root / "clip.mp4"
    media.parent.mkdir(parents=True, exist_ok=True)
    media.write_bytes(b"\x00" * 1024)
    stack = Stack(
        StackConfig(
            data_dir=root / "stack",
            api_port=free_port(),
            durable_postgres=False,
            schedulers=schedulers,
            agents=[AgentSpec(agent_id="bench", sim_devices=devices, sim_speed=0.0)],
            env={"FLEET_LOG_LEVEL": "WARNING", "FLEET_SCHEDULER_DISPATCH_POLL_SECONDS": "0.5"},
            metrics=metrics,
        )
    )
    return stack, media


@asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[Stack]:
    """`stack` started and ready for the block, stopped after it."""
    await asyncio.to_thread(stack.start_infrastructure)
    await asyncio.to_thread(stack.start_services)
    try:
        await asyncio.to_thread(stack.wait_ready, 120)
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def run(scale: Scale = BIG, data_dir: Path | None = None) -> Result:
    async with scratch("fleet-bench-", data_dir) as root:
        stack, media = bench_stack(root, scale.devices)
        async with running(stack):
            return await _measure(stack, scale, str(media))


async def e2e(scale: Scale, schedulers: int, data_dir: Path | None = None) -> Flood:
    """The end-to-end flood alone, on a fresh stack with `schedulers` schedulers."""
    async with scratch("fleet-bench-e2e-", data_dir) as root:
        stack, media = bench_stack(root, scale.devices, schedulers=schedulers)
        async with (
            running(stack),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        ):
            serials = [f"device_serial_{i}" for i in range(1, scale.devices + 1)]
            client = Client(session, stack.api_url)
            await devices_online(client, scale.devices)
            return await flood(stack, client, serials, scale.e2e_tasks, str(media))


def our_processes(stack: Stack) -> dict[str, list[int]]:
    """Every process of ours in `stack`, by group; PostgreSQL is the postmaster, whose
    tree holds every backend (and, once reaped, their time)."""
    groups: dict[str, list[int]] = {}
    for name, child in (("NATS", stack.nats.proc), ("PostgreSQL", stack.postgres.proc)):
        if child is not None:
            groups[name] = [child.pid]
    groups["gateway"] = [stack.api.pid] if stack.api and stack.api.pid else []
    groups["scheduler"] = [s.pid for s in stack.schedulers if s.pid]
    groups["agent"] = [a.pid for a in stack.agents.values() if a.pid]
    return groups


async def devices_online(client: Client, count: int) -> None:
    for _ in range(600):  # the agent announces its devices just after readiness
        devices = await client.call("GET", "/device", params={"online": "true"})
        if devices["total"] >= count:
            return
        await asyncio.sleep(0.1)


async def flood(stack: Stack, client: Client, serials: list[str], tasks: int, media: str) -> Flood:
    """Create `tasks` zero-length tasks through REST, wait until every one has ended; the
    CPU time of our processes and of the bench's client is read around it."""
    groups = our_processes(stack)
    before, client_cpu = proc.ticks(groups), time.process_time()
    quick = {"material_list": [media], "upload_wait_time": 0}
    ids, create_seconds = await _create_many(client, serials, tasks, quick)
    start = time.perf_counter() - create_seconds
    stats = await _finished(client, len(ids))
    seconds = time.perf_counter() - start
    after, client_cpu = proc.ticks(groups), time.process_time() - client_cpu
    hz = proc.TICKS_PER_SECOND
    return Flood(
        ids=ids,
        create_seconds=create_seconds,
        seconds=seconds,
        completed=stats["completed"],
        failed=stats["failed"],
        cpu_seconds={g: spent_seconds(before[g], after[g], hz) for g in groups},
        client_cpu_seconds=client_cpu,
    )


def cpu_row(flood: Flood, title: str = "CPU per task lifecycle, all our processes") -> Row:
    shares = ", ".join(
        f"{g} {per_task(s, len(flood.ids)) * 1000:.2f}" for g, s in flood.cpu_seconds.items()
    )
    client = per_task(flood.client_cpu_seconds, len(flood.ids)) * 1000
    return (
        title,
        f"{flood.cpu_per_task * 1000:.2f} ms",
        f"ms per task over the e2e flood: {shares} (the bench's HTTP client, not counted: "
        f"{client:.2f})",
    )


REPORT_WAIT = "fleet_report_wait_seconds"


async def _report_waits(session: aiohttp.ClientSession, url: str | None) -> Buckets:
    return await scrape_buckets(session, url, REPORT_WAIT) if url else {}


def report_wait_row(before: Buckets, after: Buckets) -> Row:
    """Where the flood's dispatch p99 goes: its start reports' wait in REPORTS."""
    p99 = bucket_bound(before, after, 0.99)
    if math.isnan(p99):
        return ("reports' wait in REPORTS, under the flood", "not measured", "metrics off")
    return (
        "reports' wait in REPORTS p99, under the flood",
        f"<= {ms(p99)}" if math.isfinite(p99) else "over the last bucket",
        f"stored -> applied, per report message ({REPORT_WAIT}'s bucket bound; "
        f"{share_within(before, after, 0.5):.0%} within 500 ms)",
    )


async def _measure(stack: Stack, scale: Scale, media: str) -> Result:
    rows: list[Row] = []
    serials = [f"device_serial_{i}" for i in range(1, scale.devices + 1)]
    quick = {"material_list": [media], "upload_wait_time": 0}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        client = Client(session, stack.api_url)
        await devices_online(client, scale.devices)

        # 1 + 2: create through REST, then wait for every task to complete; the
        # scheduler's histogram of reports' waits in REPORTS read around it.
        sched_metrics = stack.schedulers[0].metrics_url
        waited_before = await _report_waits(session, sched_metrics)
        e2e_flood = await flood(stack, client, serials, scale.e2e_tasks, media)
        waited_after = await _report_waits(session, sched_metrics)
        ids, create_rate = e2e_flood.ids, e2e_flood.create_rate
        completed, failed = e2e_flood.completed, e2e_flood.failed

        # 3: dispatch latency: from the moment a task could run (due, and its device
        # free after the previous task) to the agent's start. Waiting for a busy device
        # is queueing, not dispatch, and is left out.
        tasks: list[dict[str, Any]] = []
        for page in range(1, len(ids) // 100 + 2):
            data = await client.call("GET", "/task", params={"page": page, "page_size": 100})
            tasks += [t for t in data["tasks"] if t["started_at"] and t["due_at"]]
        waits = dispatch_waits(tasks)

        # 3b: the same at rest: one call of 100 tasks on idle devices, nothing else going on.
        calm_ids, _ = await _create_many(client, serials, min(100, len(serials)), quick)
        await _finished(client, len(ids) + len(calm_ids))
        calm = [await client.call("GET", f"/task/{i}") for i in calm_ids]
        calm_waits = dispatch_waits([t for t in calm if t["started_at"]])

        # 4: fill the log (held by start_time so they wait), then time the reads.
        later = (datetime.now(UTC) + timedelta(hours=3)).strftime("%H:%M")
        filler = max(0, scale.log_tasks - len(ids))
        # Timed too: the create path alone, with nothing running beside it.
        held_ids, held_seconds = await _create_many(
            client, serials, filler, quick, start_time=later
        )
        held_rate = len(held_ids) / held_seconds if held_seconds else math.nan
        list_lat = await limits.hammer(
            session, f"{client.base}/task?page=3&page_size=20", scale.latency_samples, 8
        )
        filtered = await limits.hammer(
            session,
            f"{client.base}/task?status=0&serial=device_serial_1",
            scale.latency_samples,
            8,
        )
        stats_lat = await limits.hammer(
            session, f"{client.base}/task/stats", scale.latency_samples, 8
        )
        total = (await client.call("GET", "/task/stats"))["total"]

    def rss(pid: int | None) -> str:
        return f"{psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB" if pid else "-"

    def with_children(pid: int | None) -> str:
        children = psutil.Process(pid).children() if pid else []
        return " + ".join([rss(pid), *(rss(child.pid) for child in children)])

    scheduler_rss = with_children(stack.schedulers[0].pid)
    api_rss = rss(stack.api.pid if stack.api else None)
    uvicorn = await limits.uvicorn_trivial_rate(scale.raw_requests)
    js_rate = await limits.jetstream_publish_rate(stack.nats.url, scale.raw_publishes)
    pg_rate = await limits.pg_insert_rate(stack.database_url, scale.raw_inserts)

    calls_per_s = create_rate / 100
    rows += [
        (
            "REST create, 100 serials a call",
            f"{create_rate:,.0f} tasks/s",
            f"{calls_per_s:,.1f} calls/s = {calls_per_s / uvicorn:.2%} of uvicorn's trivial rate",
        ),
        (
            f"end to end on {scale.devices} sim devices",
            f"{e2e_flood.rate:,.0f} tasks/s",
            f"{len(ids)} tasks create->completed in {e2e_flood.seconds:.1f} s "
            f"({completed} completed, {failed} failed)",
        ),
        cpu_row(e2e_flood),
        (
            "dispatch latency p50 / p99, under the flood",
            f"{ms(pct(waits, 0.5))} / {ms(pct(waits, 0.99))}",
            "ready (due, device free) -> started (as recorded), every e2e task",
        ),
        report_wait_row(waited_before, waited_after),
        (
            "dispatch latency p50 / p99, at rest",
            f"{ms(pct(calm_waits, 0.5))} / {ms(pct(calm_waits, 0.99))}",
            f"one create of {len(calm_ids)} tasks on idle devices",
        ),
        (
            f"list latency p50 / p99 ({total:,} tasks)",
            f"{ms(pct(list_lat, 0.5))} / {ms(pct(list_lat, 0.99))}",
            "page 3 of 20, 8 in flight",
        ),
        (
            "filtered list p50 / p99",
            f"{ms(pct(filtered, 0.5))} / {ms(pct(filtered, 0.99))}",
            "status=0&serial=…",
        ),
        (
            "stats latency p50 / p99",
            f"{ms(pct(stats_lat, 0.5))} / {ms(pct(stats_lat, 0.99))}",
            f"mean {ms(statistics.mean(stats_lat))}",
        ),
        (
            "scheduler / gateway resident memory",
            f"{scheduler_rss} / {api_rss}",
            "after all above; the scheduler's relay process after the +",
        ),
        (
            "raw: uvicorn trivial endpoint",
            f"{uvicorn:,.0f} req/s",
            "FastAPI, 1 worker, 32 in flight",
        ),
        ("raw: JetStream publish", f"{js_rate:,.0f} msgs/s", "publish_async, acked"),
        (
            "REST create / raw JetStream publish",
            f"{ratio(create_rate, js_rate):.1%}",
            f"{create_rate:,.0f} tasks/s vs {js_rate:,.0f} msgs/s, same run; goal >= 25 %",
        ),
        (
            "REST create, nothing else running",
            f"{held_rate:,.0f} tasks/s = {ratio(held_rate, js_rate):.1%} of raw JetStream",
            f"{len(held_ids):,} tasks held by start_time (filling the log below), "
            "100 serials a call, 4 calls in flight; the row above is measured during the flood",
        ),
        ("raw: PostgreSQL batched insert", f"{pg_rate:,.0f} rows/s", "100 rows a transaction"),
    ]
    return Result(rows=rows, completed=completed, failed=failed, created=len(ids), flood=e2e_flood)


def table(title: str, rows: list[Row]) -> str:
    lines = [f"## {title}", "", "| metric | value | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table("System", asyncio.run(run()).rows))
