"""The relay: every appended event reaches EVENTS once, in log order, even when the
scheduler stopped between commit and publish, between publish and record, when NATS
restarted in the middle of a batch, or once every message had aged out of EVENTS.

EVENTS runs here with a 1 s duplicate window, and each scenario waits past it before
the relay resumes: JetStream's dedup by message id cannot hide a relay that publishes
something twice, so only the relay's own record of what it published can pass."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from fleet_contracts.commands import CreateTasks
from fleet_contracts.events import DeviceConnected, EventEnvelope
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.subjects import EVENTS, HDR_MSG_ID, StreamSpec, event_subject
from fleet_runtime import bus as runtime_bus
from fleet_runtime.bus import ensure_streams
from fleet_scheduler import relay
from fleet_scheduler.app import Scheduler
from fleet_scheduler.migrate import installed_partitions, migrate
from fleet_scheduler.partitions import of_serial
from fleet_scheduler.settings import SchedulerSettings
from fleet_scheduler.store import Metadata, NewEvent, PostgresRecorder, init_connection
from fleet_scheduler.uow import lock_partitions

from .conftest import Bus, FakeAgent, eventually, hhmm_ahead, wait_devices

DEDUP_SECONDS = 1.0


def events_with(**changes: Any) -> Any:
    """A `stream_config` that gives EVENTS `changes` (the scheduler re-applies the
    stream's config at every start, so the test's config must come from there too)."""
    original = runtime_bus.stream_config

    def config(spec: StreamSpec, **kwargs: Any) -> Any:
        if spec.name == EVENTS.name:
            spec = replace(spec, **changes)
        return original(spec, **kwargs)

    return config


@pytest.fixture
async def short_dedup(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        runtime_bus, "stream_config", events_with(duplicate_window_seconds=DEDUP_SECONDS)
    )
    await ensure_streams(bus.js)


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
            request=CreateTaskRequest(
                serials=["r1", "r2"], script_name="post", start_time=hhmm_ahead()
            )
        )
        assert (await bus.command(cmd)).code == 0


async def append_many(db: asyncpg.Connection, n: int) -> None:
    """`n` events straight into the log (the relay reads nothing else)."""
    events = [
        NewEvent(
            f"device-bulk{i % 50}",
            DeviceConnected(serial=f"bulk{i % 50}", agent_id="bulk", host="bulk", battery=i),
        )
        for i in range(n)
    ]
    await migrate(db)
    async with db.transaction():
        await PostgresRecorder(db).append(events, Metadata(correlation_id="bulk"))


async def relayed_all(bus: Bus, db: asyncpg.Connection) -> None:
    async def caught_up() -> bool:
        positions = await log_positions(db)
        info = await bus.js.stream_info(EVENTS.name)
        return bool(positions) and info.state.last_seq >= len(positions)

    await eventually(caught_up, within=20, what="relay caught up")


async def rewind_record(db: asyncpg.Connection, kept: int) -> None:
    """What a relay killed after EVENTS acked but before it recorded leaves behind: a
    record `kept` messages into the stream (position and sequence, written together)."""
    position = (await log_positions(db))[kept - 1]
    await db.execute(
        "WITH p AS (UPDATE relay_partitions r SET position = coalesce(("
        " SELECT max(partition_position) FROM events e"
        " WHERE e.partition = r.partition AND e.position <= $1), 0))"
        " UPDATE relay_position SET position = $1, stream_seq = $2 WHERE id = 1",
        position,
        kept,
    )


async def test_events_committed_while_no_relay_ran_are_published_once_later(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection, short_dedup: None
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
        await relayed_all(bus, db)
    envs = await published(bus)
    assert [e.position for e in envs] == positions
    created = next(e for e in envs if e.type == "task.created")
    assert created.stream_id.startswith("task-") and created.correlation_id
    assert created.event().type == "task.created"

    # Published but not recorded as published (killed between the ack and the record),
    # and long enough ago that JetStream no longer remembers the message ids.
    await rewind_record(db, 3)
    await asyncio.sleep(DEDUP_SECONDS + 0.5)
    async with Scheduler(settings):
        await create_some(bus, 1)
        await relayed_all(bus, db)
        await asyncio.sleep(0.5)  # a relay resuming from its stale record would go on
    assert [e.position for e in await published(bus)] == await log_positions(db)
    record = await db.fetchrow("SELECT position, stream_seq FROM relay_position")
    assert record["position"] == (await log_positions(db))[-1]
    assert record["stream_seq"] == len(await log_positions(db))
    await agent.close()


async def test_one_relay_publishes_and_another_takes_over_where_it_really_stopped(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection, short_dedup: None
) -> None:
    other = settings.model_copy(update={"scheduler_id": "other"})
    agent = FakeAgent(bus, "relay-agent", ["r1", "r2"])
    leader, standby = Scheduler(settings), Scheduler(other)
    await leader.start()
    try:
        await standby.start()
        await agent.start()
        await wait_devices(bus, 2)
        await create_some(bus, 5)
        await relayed_all(bus, db)
        # The leader's record falls behind what it published (as if killed between the
        # ack and the record), long enough ago for JetStream to forget the ids; then it
        # goes, and the standby takes over from that record.
        await rewind_record(db, 4)
        await asyncio.sleep(DEDUP_SECONDS + 0.5)
    finally:
        await leader.stop()
    try:
        await create_some(bus, 2)
        await relayed_all(bus, db)
        await asyncio.sleep(0.5)
    finally:
        await standby.stop()
    envs = await published(bus)
    assert [e.position for e in envs] == await log_positions(db)
    assert json.loads(envs[-1].model_dump_json())["message_id"] == str(envs[-1].position)
    await agent.close()


async def test_a_partly_stored_batch_is_neither_skipped_nor_repeated(
    bus: Bus,
    settings: SchedulerSettings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # EVENTS refuses one message in the middle of a batch (too big for it) until the
    # operator raises the limit: the batch's acks come back partly good, partly not.
    monkeypatch.setattr(relay, "DEADLINE_SECONDS", 1.0)
    limit = {"size": 2048}
    base = events_with(duplicate_window_seconds=DEDUP_SECONDS)

    def limited(spec: StreamSpec, **kwargs: Any) -> Any:
        config = base(spec, **kwargs)
        if spec.name == EVENTS.name:
            config.max_msg_size = limit["size"]
        return config

    monkeypatch.setattr(runtime_bus, "stream_config", limited)
    await ensure_streams(bus.js)
    await append_many(db, 30)
    big = NewEvent("device-big", DeviceConnected(serial="big", agent_id="bulk", host="x" * 4000))
    async with db.transaction():
        await PostgresRecorder(db).append([big], Metadata(correlation_id="big"))
    await append_many(db, 30)
    async with Scheduler(settings):

        async def stalled_at_the_big_one() -> bool:
            info = await bus.js.stream_info(EVENTS.name)
            return int(info.state.last_seq) == 30

        await eventually(stalled_at_the_big_one, what="the 30 before the big event stored")
        await asyncio.sleep(DEDUP_SECONDS + 1.5)  # failed attempts, past the dedup window
        assert (await bus.js.stream_info(EVENTS.name)).state.last_seq == 30
        limit["size"] = -1
        await ensure_streams(bus.js)
        await relayed_all(bus, db)
        await asyncio.sleep(0.5)
    assert [e.position for e in await published(bus)] == await log_positions(db)


async def test_relay_resumes_exactly_after_nats_restarts_in_the_middle_of_a_batch(
    bus: Bus,
    settings: SchedulerSettings,
    db: asyncpg.Connection,
    nats_server: Any,
    short_dedup: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "BATCH", 50)  # many batches, so the restart lands in one
    monkeypatch.setattr(relay, "DEADLINE_SECONDS", 2.0)  # acks lost with the server
    await append_many(db, 4000)
    total = len(await log_positions(db))
    async with Scheduler(settings):

        async def some_published() -> int:
            return int((await bus.js.stream_info(EVENTS.name)).state.last_seq)

        seen = await eventually(some_published, within=20, what="first events published")
        assert seen < total
        nats_server.restart(kill=True)
        await asyncio.sleep(DEDUP_SECONDS + 0.5)

        async def caught_up() -> bool:
            try:
                return await some_published() >= total
            except Exception:
                return False

        await eventually(caught_up, within=30, what="relay caught up after the restart")
        await asyncio.sleep(0.5)
    assert [e.position for e in await published(bus)] == await log_positions(db)


async def test_relay_leads_again_after_every_event_aged_out(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        runtime_bus,
        "stream_config",
        events_with(max_age_seconds=2.0, duplicate_window_seconds=DEDUP_SECONDS),
    )
    await ensure_streams(bus.js)
    await append_many(db, 20)
    async with Scheduler(settings):
        await relayed_all(bus, db)

    async def aged_out() -> bool:
        return (await bus.js.stream_info(EVENTS.name)).state.messages == 0

    await eventually(aged_out, what="every event aged out of EVENTS")
    # Old record style (no sequence) too: the relay must not need the newest message.
    await db.execute("UPDATE relay_position SET stream_seq = 0")
    async with Scheduler(settings):
        await append_many(db, 5)

        async def new_ones() -> bool:
            return (await bus.js.stream_info(EVENTS.name)).state.last_seq >= 25

        await eventually(new_ones, what="new events published after the age-out")
        envs = await published(bus)
    assert [e.position for e in envs] == (await log_positions(db))[-len(envs) :]
    assert envs and envs[-1].position == (await log_positions(db))[-1]


async def test_a_partition_committing_late_is_not_passed_over(
    bus: Bus, settings: SchedulerSettings, db: asyncpg.Connection
) -> None:
    # Writers of different partitions commit in any order: the event with the lower
    # global position can become visible after the relay has published a higher one.
    await migrate(db)
    count = await installed_partitions(db)
    first, second = (
        "late-a",
        next(
            f"late-b{i}"
            for i in range(100)
            if of_serial(f"late-b{i}", count) != of_serial("late-a", count)
        ),
    )

    def connected(serial: str) -> NewEvent:
        return NewEvent(f"device-{serial}", DeviceConnected(serial=serial, agent_id="a", host="h"))

    slow = await asyncpg.connect(settings.database_url)
    await init_connection(slow)
    try:
        async with Scheduler(settings):
            async with slow.transaction():
                await lock_partitions(slow, [of_serial(first, count)])
                recorder = PostgresRecorder(slow, partition_count=count)
                early = await recorder.append([connected(first)], Metadata())
                async with db.transaction():
                    await lock_partitions(db, [of_serial(second, count)])
                    quick = PostgresRecorder(db, partition_count=count)
                    later = await quick.append([connected(second)], Metadata())
                    await db.execute("SELECT pg_notify('fleet_events', '')")
                assert early[0].position < later[0].position

                async def later_published() -> bool:
                    return [e.position for e in await published(bus)] == [later[0].position]

                await eventually(later_published, what="the other partition's event published")
            await slow.execute("SELECT pg_notify('fleet_events', '')")
            await relayed_all(bus, db)
    finally:
        await slow.close()
    envs = await published(bus)
    assert sorted(e.position for e in envs) == [early[0].position, later[0].position]
    record = await db.fetch("SELECT partition, position FROM relay_partitions WHERE position > 0")
    assert {r["partition"]: r["position"] for r in record} == {
        of_serial(first, count): 1,
        of_serial(second, count): 1,
    }
