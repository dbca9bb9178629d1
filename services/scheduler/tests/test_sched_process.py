"""The process edges: read models rebuilt from the log match the live ones, and
`python -m fleet_scheduler` serves, then stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg

from fleet_contracts.commands import CreateTasks, DeleteTask, StopTask
from fleet_contracts.queries import Ping
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus, FakeAgent, FakeClock, eventually, wait_devices

SNAPSHOT = {
    "tasks": "SELECT * FROM tasks ORDER BY id",
    "task_script_stats": "SELECT * FROM task_script_stats WHERE count <> 0 ORDER BY 1, 2, 3",
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
            {"usernames": ["x2_b"], "start_time": "00:00"},
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

        async def answers() -> bool:
            try:
                return bool((await bus.query(Ping())).data == {"scheduler_id": "proc"})
            except Exception:
                return False

        await eventually(answers, within=20, what="scheduler answering ping")
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
