"""What metrics cost, end to end: the same flood of tasks with every service's metrics
off (`StackConfig(metrics=False)`: FLEET_METRICS_ENABLED=false, no metrics ports) and on,
scraped every second (fifteen times Prometheus's default rate), one fresh stack per
round, rounds alternating off / on so a machine shared with others drifts equally on
both. The figure per mode is the median of its rounds.

Two measures: tasks per second (wall clock; on a machine shared with other work it
swings by tens of percent from round to round) and CPU seconds per 1,000 tasks summed
over every process of the stack (gateway, scheduler, agent, NATS, PostgreSQL and its
backends), which other load on the machine disturbs less. Beside them, the in-process
hooks alone (what one task's events, dispatch and run with a dozen steps cost the
scheduler and the agent in counters and histograms), timed in a loop here, as a share of
the CPU a task costs: a bound that machine noise cannot blur.

`python -m bench metrics-cost` (sizes `BIG`) or `python -m bench metrics-cost --small`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import proc
from bench.cputime import spent_seconds
from bench.scratch import scratch
from bench.system import (
    Client,
    Row,
    _create_many,
    _finished,
    bench_stack,
    devices_online,
    our_processes,
    running,
)

SCRAPE_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class CostScale:
    devices: int
    tasks: int
    rounds: int


BIG = CostScale(devices=1000, tasks=5000, rounds=3)
SMALL = CostScale(devices=200, tasks=2000, rounds=4)


@dataclass
class Round:
    metrics: bool
    rate: float
    scrapes: int
    completed: int
    cpu_per_1000: float


async def _scrape_until(
    urls: list[str], stop: asyncio.Event, session: aiohttp.ClientSession
) -> int:
    """Scrape every URL once a second until `stop`; the number of scrapes answered."""
    done = 0
    while not stop.is_set():
        for url in urls:
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == 200, f"{url}: {resp.status}"
                done += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SCRAPE_EVERY_SECONDS)
    return done


def hook_seconds_per_task(repeat: int = 5000) -> float:
    """CPU seconds the in-process metric hooks spend on one task (scheduler + agent)."""
    from datetime import UTC, datetime

    from fleet_agent.metrics import RunMeter
    from fleet_contracts.agent import TaskCompletedReport
    from fleet_scheduler import metrics as scheduler_metrics
    from fleet_scheduler.store import RecordedEvent

    now = datetime.now(UTC)
    kinds = ["task.created", "task.scheduled", "task.dispatched", "task.started"]
    events = [
        RecordedEvent(i, "task-1", i, kind, {"task_id": 1}, {}, now)
        for i, kind in enumerate([*kinds, "task.completed"], 1)
    ]
    outcome = TaskCompletedReport(agent_id="a", task_id=1, dispatch_id="d")
    steps = [f"step {i}" for i in range(12)]
    start = time.process_time()
    for _ in range(repeat):
        scheduler_metrics.command_handled("create_tasks", 0, time.perf_counter())
        scheduler_metrics.committed(events, [0.05])
        meter = RunMeter()
        for step in steps:
            meter.begin("post", step)
        meter.ended("post", outcome)
    return (time.process_time() - start) / repeat


async def one_round(scale: CostScale, metrics: bool, root: Path) -> Round:
    stack, media = bench_stack(root, scale.devices, metrics)
    async with running(stack):
        urls = list(stack.metrics_urls().values())
        assert bool(urls) == metrics, urls
        serials = [f"device_serial_{i}" for i in range(1, scale.devices + 1)]
        quick = {"material_list": [str(media)], "upload_wait_time": 0}
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = Client(session, stack.api_url)
            await devices_online(client, scale.devices)
            stop = asyncio.Event()
            scraper = asyncio.create_task(_scrape_until(urls, stop, session))
            # One reading for every process of ours: PostgreSQL backends that end
            # mid-flood keep their time (the postmaster's reaped-children counters).
            groups = our_processes(stack)
            cpu_before = proc.ticks(groups)
            ids, create_seconds = await _create_many(client, serials, scale.tasks, quick)
            start = time.perf_counter() - create_seconds
            stats = await _finished(client, len(ids))
            elapsed = time.perf_counter() - start
            cpu_after = proc.ticks(groups)
            stop.set()
            scrapes = await scraper
        hz = proc.TICKS_PER_SECOND
        cpu = sum(spent_seconds(cpu_before[g], cpu_after[g], hz) for g in groups)
        return Round(
            metrics, len(ids) / elapsed, scrapes, stats["completed"], cpu * 1000 / len(ids)
        )


async def run(scale: CostScale = BIG, data_dir: Path | None = None) -> list[Row]:
    rounds: list[Round] = []
    async with scratch("fleet-bench-metrics-", data_dir) as root:
        for i in range(scale.rounds):
            for metrics in (False, True):
                rounds.append(await one_round(scale, metrics, root / f"r{i}-{int(metrics)}"))
    off = [r.rate for r in rounds if not r.metrics]
    on = [r.rate for r in rounds if r.metrics]
    off_median, on_median = statistics.median(off), statistics.median(on)
    cost = (off_median - on_median) / off_median
    scrapes = sum(r.scrapes for r in rounds if r.metrics)
    cpu_off = [r.cpu_per_1000 for r in rounds if not r.metrics]
    cpu_on = [r.cpu_per_1000 for r in rounds if r.metrics]
    cpu_off_median, cpu_on_median = statistics.median(cpu_off), statistics.median(cpu_on)
    cpu_cost = (cpu_on_median - cpu_off_median) / cpu_off_median
    paired = [(a.rate - b.rate) / a.rate for a, b in zip(rounds[::2], rounds[1::2], strict=True)]
    hooks = hook_seconds_per_task()
    failed = sum(scale.tasks - r.completed for r in rounds)

    def listed(rates: list[float], digits: int = 0) -> str:
        return ", ".join(f"{rate:,.{digits}f}" for rate in rates)

    return [
        (
            f"end to end, metrics off ({scale.devices} sim devices, {scale.tasks} tasks)",
            f"{off_median:,.0f} tasks/s",
            f"median of {len(off)} rounds: {listed(off)}",
        ),
        (
            "end to end, metrics on, scraped every second",
            f"{on_median:,.0f} tasks/s",
            f"median of {len(on)} rounds: {listed(on)}; {scrapes} scrapes answered",
        ),
        (
            "cost of metrics, throughput",
            f"{cost:+.1%}",
            f"(off - on) / off, medians; budget 5 %; {failed} tasks not completed",
        ),
        (
            "CPU per 1,000 tasks, metrics off",
            f"{cpu_off_median:.2f} s",
            f"every process of the stack; rounds: {listed(cpu_off, 2)}",
        ),
        (
            "CPU per 1,000 tasks, metrics on",
            f"{cpu_on_median:.2f} s",
            f"rounds: {listed(cpu_on, 2)}",
        ),
        (
            "cost of metrics, CPU",
            f"{cpu_cost:+.1%}",
            f"(on - off) / off, medians; budget 5 %; least-disturbed rounds (min): "
            f"{(min(cpu_on) - min(cpu_off)) / min(cpu_off):+.1%}",
        ),
        (
            "cost of metrics, throughput, paired rounds",
            f"{statistics.median(paired):+.1%}",
            f"(off - on) / off per adjacent pair: {listed([p * 100 for p in paired], 1)} %",
        ),
        (
            "in-process hooks per task",
            f"{hooks * 1e6:.0f} µs",
            f"{hooks * 1000 / cpu_off_median:.2%} of a task's CPU with metrics off "
            "(events, dispatch latency, a run of 12 steps; the SQL read of ready times "
            "per report batch and the gateway's middleware are not in it)",
        ),
    ]
