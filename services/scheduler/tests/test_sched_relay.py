"""The relay: every appended event reaches EVENTS once, in log order, even when the
scheduler stopped between commit and publish or lost its record of what it published."""

from __future__ import annotations

import json

import asyncpg

from fleet_contracts.commands import CreateTasks
from fleet_contracts.events import EventEnvelope
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.subjects import EVENTS, HDR_MSG_ID, event_subject
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus, FakeAgent, eventually, wait_devices


async def published(bus: Bus) -> list[EventEnvelope]:
    info = await bus.js.stream_info(EVENTS.name)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if not info.state.messages:
            break
        msg = await bus.js.get_msg(EVENTS.name, seq=seq)
        env = EventEnvelope.model_validate_json(msg.data)
        assert (msg.headers or {}).get(HDR_MSG_ID) == str(env.position)
        assert msg.subject == event_subject(env.stream_id, env.type)
        out.append(env)
    return out


async def log_positions(db: asyncpg.Connection) -> list[int]:
    return [r[0] for r in await db.fetch("SELECT position FROM events ORDER BY position")]


async def create_some(bus: Bus, n: int) -> None:
    for _ in range(n):
        cmd = CreateTasks(
            request=CreateTaskRequest(serials=["r1", "r2"], script_name="post", start_time="00:00")
        )
        assert (await bus.command(cmd)).code == 0


async def test_events_committed_while_no_relay_ran_are_published_once_later(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection
) -> None:
    agent = FakeAgent(bus, "relay-agent", ["r1", "r2"])
    # Commit without publishing: the relay is what a crash between the two would stop.
    async with Scheduler(settings, relay_enabled=False):
        await agent.start()
        await wait_devices(bus, 2)
        await create_some(bus, 3)
    assert await published(bus) == []
    positions = await log_positions(db)
    assert len(positions) >= 2 + 6

    async with Scheduler(settings):

        async def caught_up() -> bool:
            return len(await published(bus)) == len(positions)

        await eventually(caught_up, what="relay caught up")
    envs = await published(bus)
    assert [e.position for e in envs] == positions
    created = next(e for e in envs if e.type == "task.created")
    assert created.stream_id.startswith("task-") and created.correlation_id
    assert created.event().type == "task.created"

    # Published but not recorded as published (crash before the position update):
    # the relay starts from what EVENTS already holds and publishes nothing twice.
    await db.execute("UPDATE relay_position SET position = 0")
    async with Scheduler(settings):
        await create_some(bus, 1)
        total = len(await log_positions(db))

        async def caught_up_again() -> bool:
            return len(await published(bus)) >= total

        await eventually(caught_up_again, what="relay caught up after restart")
    assert [e.position for e in await published(bus)] == await log_positions(db)
    recorded = await db.fetchval("SELECT position FROM relay_position")
    assert recorded == (await log_positions(db))[-1]
    await agent.close()


async def test_only_one_relay_publishes_with_two_schedulers(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection
) -> None:
    other = settings.model_copy(update={"scheduler_id": "other"})
    agent = FakeAgent(bus, "relay-agent", ["r1", "r2"])
    async with Scheduler(settings), Scheduler(other):
        await agent.start()
        await wait_devices(bus, 2)
        await create_some(bus, 5)
        total = len(await log_positions(db))

        async def caught_up() -> bool:
            return len(await published(bus)) >= total

        await eventually(caught_up, what="relay caught up")
    envs = await published(bus)
    assert [e.position for e in envs] == await log_positions(db)
    assert json.loads(envs[-1].model_dump_json())["message_id"] == str(envs[-1].position)
    await agent.close()
