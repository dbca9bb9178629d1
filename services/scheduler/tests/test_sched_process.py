"""The process edges: read models rebuilt from the log match the live ones,
`python -m fleet_scheduler` serves, then stops cleanly on SIGTERM, and its relay runs
in a process of its own that ends with the scheduler's, even a killed one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import psutil

from fleet_contracts.commands import CreateTasks, DeleteTask, StopTask
from fleet_contracts.queries import Ping
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.subjects import EVENTS
from fleet_devstack import free_port
from fleet_scheduler.app import Scheduler
from fleet_scheduler.metrics import RELAY_LOCK
from fleet_scheduler.settings import SchedulerSettings
from tests.scrape import scrape

from .conftest import Bus, FakeAgent, FakeClock, eventually, hhmm_ahead, wait_devices

SNAPSHOT = {
    "tasks": "SELECT * FROM tasks ORDER BY id",
    "task_counts": "SELECT * FROM task_counts WHERE count <> 0 ORDER BY 1, 2, 3, 4",
    "task_serial_counts": "SELECT * FROM task_serial_counts WHERE count <> 0 ORDER BY 1, 2, 3, 4",
    "devices": "SELECT serial, agent_id, host, model, online, busy, current_task_id,"
    " last_task_id FROM devices ORDER BY serial",
    "accounts": "SELECT * FROM accounts ORDER BY username",
}


async def snapshot(db: asyncpg.Connection) -> dict[str, list[dict[str, object]]]:
    return {name: [dict(r) for r in await db.fetch(sql)] for name, sql in SNAPSHOT.items()}


def env_for(settings: SchedulerSettings) -> dict[str, str]:
    return {
        **os.environ,
        "FLEET_NATS_URL": settings.nats_url,
        "FLEET_DATABASE_URL": settings.database_url,
        "FLEET_SCHEDULER_ID": "proc",
        "FLEET_LOG_FORMAT": "json",
    }


async def answering(bus: Bus) -> None:
    """Until the scheduler process started here ("proc") answers a ping."""

    async def answers() -> bool:
        try:
            return bool((await bus.query(Ping())).data == {"scheduler_id": "proc"})
        except Exception:
            return False

    await eventually(answers, within=20, what="scheduler answering ping")


async def test_rebuild_reproduces_the_read_models(
    bus: Bus, settings: SchedulerSettings, clock: FakeClock, db: asyncpg.Connection
) -> None:
    async with Scheduler(settings, clock=clock):
        agent = FakeAgent(bus, "rb", ["x1", "x2"])
        agent.auto_start = True
        await agent.start(accounts=True)
        await wait_devices(bus, 2, accounts=4)
        ids = []
        for body in (
            {"serials": ["x1", "x2"]},
            {"serials": ["x1"], "enable_multi_account": True},
            {"usernames": ["x2_b"], "start_time": hhmm_ahead(clock.now)},
        ):
            cmd = CreateTasks(request=CreateTaskRequest(script_name="post", **body))  # type: ignore[arg-type]
            ids += (await bus.command(cmd)).data["task_ids"]

        async def both_running() -> bool:
            return len(agent.runs) >= 2

        await eventually(both_running, what="two runs")
        await agent.complete(agent.runs[0])
        await bus.command(StopTask(task_id=agent.runs[1].task_id))
        await bus.command(DeleteTask(task_id=ids[-1]))

        async def settled() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM tasks WHERE state = 'completed'"))

        await eventually(settled, what="completion projected")
        await agent.close()
    before = await snapshot(db)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet_scheduler",
        "rebuild-read-models",
        env=env_for(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"rebuilt read models from" in out
    assert await snapshot(db) == before


async def test_process_serves_and_stops_on_sigterm(bus: Bus, settings: SchedulerSettings) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet_scheduler",
        env=env_for(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await answering(bus)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_settings_are_named_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleet_scheduler"],
        env={**os.environ, "FLEET_TIMEZONE": "Mars/Olympus"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "timezone" in result.stderr and "Mars/Olympus" in result.stderr
    assert "Traceback" not in result.stderr


def relay_children(pid: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(pid).children()
        if child.cmdline()[-3:] == ["-m", "fleet_scheduler", "relay"]
    ]


async def relay_leaders(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1 AND objid = $2",
            RELAY_LOCK >> 32,
            RELAY_LOCK & 0xFFFFFFFF,
        )
    )


async def test_the_relay_publishes_from_its_own_process_which_ends_with_the_scheduler(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection
) -> None:
    port = free_port()
    env = {**env_for(settings), "FLEET_SCHEDULER_METRICS_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet_scheduler", env=env, stderr=subprocess.DEVNULL
    )
    agent = FakeAgent(bus, "rp", ["rp1", "rp2"])
    try:
        await answering(bus)
        agent.auto_complete = True
        await agent.start()
        await wait_devices(bus, 2)
        created = await bus.command(
            CreateTasks(request=CreateTaskRequest(script_name="post", serials=["rp1", "rp2"]))
        )
        assert created.code == 0

        async def all_published() -> int | None:
            logged = int(await db.fetchval("SELECT count(*) FROM events"))
            stored = int((await bus.js.stream_info(EVENTS.name)).state.last_seq)
            done = await db.fetchval("SELECT count(*) FROM tasks WHERE state = 'completed'")
            return stored if done == 2 and stored == logged else None

        stored = await eventually(all_published, within=20, what="the log published")
        [child] = relay_children(proc.pid)

        async def counted() -> bool:
            metrics = await scrape(f"http://127.0.0.1:{port}/metrics")
            return metrics.value("fleet_relay_published_events_total") == stored

        # The relay's batches, counted by the scheduler that started it.
        await eventually(counted, what="the relay's batches in the scheduler's metrics")
        assert await relay_leaders(db) == 1

        proc.kill()
        await proc.wait()
        # Its stdin ended with the scheduler: it lets go of the relay's lock and exits.
        gone, _ = await asyncio.to_thread(psutil.wait_procs, [child], 10)
        assert gone == [child]

        async def released() -> bool:
            return await relay_leaders(db) == 0

        await eventually(released, what="the relay's lock released")
    finally:
        await agent.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
