"""The scheduler alone: how fast it turns commands into tasks, beside the raw limits.

Starts its own NATS and PostgreSQL, announces 1,000 devices on 10 simulated hosts (the
agents' AgentStartedReports, published here; no agent runs), then sends 10,000 tasks
through COMMANDS the way the gateway does: 90 creates of 100 serials and 1,000 creates
of one serial, all in flight at once. The tasks are held by a start_time twelve hours
ahead so the figure is the command path alone (dispatch is measured end to end in the
whole-system bench).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import nats
from nats.aio.msg import Msg

from bench.limits import jetstream_publish_rate, pg_insert_rate
from fleet_contracts.agent import AgentStartedReport, DeviceInfo
from fleet_contracts.commands import CommandResult, CreateTasks, subject_for
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.subjects import HDR_REPLY_TO, report_subject
from fleet_devstack import EmbeddedNats, EmbeddedPostgres
from fleet_runtime.bus import ensure_streams, headers_for
from fleet_runtime.logs import configure
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

HOSTS = 10
DEVICES_PER_HOST = 100


def _creates() -> list[CreateTasks]:
    serials = [f"device_serial_{n}" for n in range(1, HOSTS * DEVICES_PER_HOST + 1)]
    hold = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
    config = {"captions": "{New|Fresh} drop {#fyp|#viral}", "material_list": ["/m/v.mp4"]}
    bodies = [serials[(i * 100) % 1000 : (i * 100) % 1000 + 100] for i in range(90)]
    bodies += [[serials[i]] for i in range(1000)]
    return [
        CreateTasks(
            request=CreateTaskRequest(
                serials=b,
                script_name="post",
                script_config=config,
                start_time=hold,
                min_interval=1,
                max_interval=5,
            )
        )
        for b in bodies
    ]


async def _scenario(nats_url: str, dsn: str) -> tuple[int, int, int, float]:
    settings = SchedulerSettings(
        nats_url=nats_url,
        database_url=dsn,
        scheduler_id="bench",
        scheduler_agent_lease_seconds=3600,
        scheduler_seed=1,
        log_level="WARNING",
        scheduler_metrics_port=0,  # the whole-system bench measures metrics' cost
    )
    async with Scheduler(settings):
        nc = await nats.connect(nats_url)
        js = nc.jetstream(publish_async_max_pending=2000)
        await ensure_streams(js)
        for h in range(HOSTS):
            devices = [
                DeviceInfo(serial=f"device_serial_{h * DEVICES_PER_HOST + d + 1}", model="sim")
                for d in range(DEVICES_PER_HOST)
            ]
            report = AgentStartedReport(agent_id=f"host-{h}", host=f"host-{h}", devices=devices)
            await js.publish(
                report_subject(report.agent_id, report.type),
                report.to_bytes(),
                headers=headers_for(report),
            )
        conn = await asyncpg.connect(dsn)
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM devices") < HOSTS * DEVICES_PER_HOST:
            if time.monotonic() > deadline:
                raise RuntimeError("devices not announced in 60 s")
            await asyncio.sleep(0.05)
        first_position = await conn.fetchval("SELECT COALESCE(max(position), 0) FROM events")

        creates = _creates()
        replies: asyncio.Queue[CommandResult] = asyncio.Queue()
        inbox = nc.new_inbox()

        async def on_reply(msg: Msg) -> None:
            await replies.put(CommandResult.model_validate_json(msg.data))

        await nc.subscribe(inbox + ".*", cb=on_reply)
        start = time.perf_counter()
        for i, cmd in enumerate(creates):
            await js.publish_async(
                subject_for(cmd),
                cmd.to_bytes(),
                headers=headers_for(cmd, **{HDR_REPLY_TO: f"{inbox}.{i}"}),
            )
        await js.publish_async_completed()
        tasks = 0
        for _ in creates:
            result = await asyncio.wait_for(replies.get(), 120)
            if result.code != 0:
                raise RuntimeError(f"create failed: {result.message}")
            tasks += result.data["created_count"]
        elapsed = time.perf_counter() - start
        events = await conn.fetchval(
            "SELECT count(*) FROM events WHERE position > $1", first_position
        )
        await conn.close()
        await nc.close()
    return len(creates), tasks, events, elapsed


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        nats_server = EmbeddedNats(root / "nats", log_file=root / "nats.log")
        pg = EmbeddedPostgres(root / "pg", log_file=root / "pg.log", durable=False)
        nats_server.start()
        pg.start()
        try:
            dsn = pg.create_database("bench_scheduler")
            commands, tasks, events, elapsed = await _scenario(nats_server.url, dsn)
            js_rate = await jetstream_publish_rate(nats_server.url, 20_000)
            pg_rate = await pg_insert_rate(pg.create_database("bench_raw"), 50_000)
        finally:
            nats_server.stop()
            pg.stop()
    cmd_rate = commands / elapsed
    event_rate = events / elapsed
    return [
        ("devices announced", f"{HOSTS * DEVICES_PER_HOST}", f"{HOSTS} hosts"),
        ("tasks created", f"{tasks}", f"{commands} commands (90 x 100 serials, 1000 x 1)"),
        ("commands handled/s", f"{cmd_rate:,.0f}", f"{elapsed:.2f} s for all"),
        ("tasks created/s", f"{tasks / elapsed:,.0f}", "through COMMANDS, reply after commit"),
        ("events appended/s", f"{event_rate:,.0f}", f"{events} events, read models updated"),
        ("raw JetStream publish/s", f"{js_rate:,.0f}", "publish_async, same NATS"),
        ("raw Postgres insert rows/s", f"{pg_rate:,.0f}", "batches of 100, same server"),
        ("commands/s vs JetStream", f"{cmd_rate / js_rate:.2%}", "ratio"),
        ("events/s vs Postgres rows/s", f"{event_rate / pg_rate:.2%}", "ratio"),
    ]


if __name__ == "__main__":
    configure("bench", "WARNING")
    rows = asyncio.run(run())
    print("| metric | value | note |\n|---|---|---|")
    for metric, value, note in rows:
        print(f"| {metric} | {value} | {note} |")
