"""Agent liveness: heartbeats heard, agents declared lost, starts never confirmed.

Heartbeats arrive on core NATS at every scheduler replica; each keeps them in memory
and flushes the newest time per agent to the agents table every second (one row per
agent, not per phone), so the database write rate does not grow with the beats. Declaring an
agent lost is done from that table, under row locks, by whichever replica gets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from fleet_contracts.agent import DeviceInfo, Heartbeat
from fleet_contracts.events import DeviceDisconnected
from fleet_contracts.subjects import HEARTBEAT_WILDCARD, REPORTS, device_stream_id
from fleet_scheduler.context import AgentSeen, Context
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.projections import task_state
from fleet_scheduler.reports import connected_event, fail_active
from fleet_scheduler.store import NewEvent
from fleet_scheduler.task import Task
from fleet_scheduler.uow import unit_of_work

log = structlog.get_logger(__name__)

AGENT_LOST = "agent lost"
PRUNE_EVERY_SECONDS = 600.0


async def subscribe_heartbeats(ctx: Context) -> None:
    async def on_beat(msg: Msg) -> None:
        try:
            beat = Heartbeat.from_bytes(msg.data)
        except ValidationError as exc:
            log.warning("heartbeat.unreadable", error=str(exc))
            return
        ctx.heartbeats[beat.agent_id] = AgentSeen(ctx.clock(), beat.host, list(beat.devices))

    await ctx.nc.subscribe(HEARTBEAT_WILDCARD, cb=on_beat)


async def flush_heartbeats(ctx: Context) -> None:
    """Write what was heard; phones of an agent declared lost come back online when it
    beats again and still holds them."""
    heard, ctx.heartbeats = ctx.heartbeats, {}
    if not heard:
        return
    agents = sorted(heard)
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO agents (agent_id, host, last_seen, lost)"
            " SELECT a, h, s, false FROM unnest($1::text[], $2::text[], $3::timestamptz[])"
            " AS x(a, h, s) ON CONFLICT (agent_id) DO UPDATE SET host = EXCLUDED.host,"
            " last_seen = GREATEST(agents.last_seen, EXCLUDED.last_seen), lost = false",
            agents,
            [heard[a].host for a in agents],
            [heard[a].last_seen for a in agents],
        )
        pairs = [(a, d.serial) for a in agents for d in heard[a].devices]
        back = await conn.fetch(BACK_ONLINE, [p[0] for p in pairs], [p[1] for p in pairs])
    if not back:
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        # Read again under the lock: a report may have brought them back meanwhile.
        rows = await uow.conn.fetch(
            BACK_ONLINE, [r["agent_id"] for r in back], [r["serial"] for r in back]
        )
        await uow.append(
            [
                connected_event(
                    r["agent_id"],
                    heard[r["agent_id"]].host,
                    DeviceInfo(
                        serial=r["serial"],
                        model=r["model"],
                        android_version=r["android_version"],
                        battery=r["battery"],
                    ),
                )
                for r in rows
            ]
        )
    log.info("devices.back_online", count=len(rows))


BACK_ONLINE = (
    "SELECT d.serial, d.agent_id, d.model, d.android_version, d.battery FROM devices d"
    " JOIN unnest($1::text[], $2::text[]) AS h(agent_id, serial)"
    " ON d.serial = h.serial AND d.agent_id = h.agent_id"
    f" WHERE NOT d.online AND d.offline_reason = '{AGENT_LOST}' ORDER BY d.serial"
)
"""Phones a heartbeat lists that went offline only because their agent was declared
lost; an unplugged phone comes back only by its agent's DeviceConnectedReport."""


async def _any(ctx: Context, sql: str, *args: object) -> bool:
    """A look without the events lock: most passes find nothing to do."""
    async with ctx.pool.acquire() as conn:
        return bool(await conn.fetch(sql + " LIMIT 1", *args))


async def declare_lost(ctx: Context) -> None:
    now = ctx.clock()
    lease = ctx.settings.scheduler_agent_lease_seconds
    if now - ctx.started_at < timedelta(seconds=lease):
        return  # just started: agents have not had a lease's time to be heard yet
    if not await _any(
        ctx,
        "SELECT 1 FROM agents WHERE NOT lost AND last_seen < $1",
        now - timedelta(seconds=lease),
    ):
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        lost = await uow.conn.fetch(
            "SELECT agent_id, last_seen FROM agents WHERE NOT lost AND last_seen < $1"
            " ORDER BY agent_id FOR UPDATE",
            now - timedelta(seconds=lease),
        )
        for agent in lost:
            agent_id = agent["agent_id"]
            silent = int((now - agent["last_seen"]).total_seconds())
            await uow.conn.execute("UPDATE agents SET lost = true WHERE agent_id = $1", agent_id)
            failed = await fail_active(
                uow,
                "agent_id = $1",
                [agent_id],
                f"agent lost: {agent_id} sent no heartbeat for {silent}s",
            )
            devices = await uow.conn.fetch(
                "SELECT serial FROM devices WHERE agent_id = $1 AND (online OR busy)"
                " ORDER BY serial",
                agent_id,
            )
            await uow.append(
                [
                    NewEvent(
                        device_stream_id(d["serial"]),
                        DeviceDisconnected(
                            serial=d["serial"], agent_id=agent_id, reason=AGENT_LOST
                        ),
                    )
                    for d in devices
                ]
            )
            log.warning("agent.lost", agent_id=agent_id, silent_seconds=silent, failed=failed)


async def expire_starts(ctx: Context) -> None:
    """Fail dispatched tasks whose agent never confirmed the start within the timeout."""
    if not await _any(
        ctx, "SELECT 1 FROM tasks WHERE state = 'dispatched' AND lease_until < $1", ctx.clock()
    ):
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        rows = await uow.conn.fetch(
            "SELECT DISTINCT agent_id FROM tasks WHERE state = 'dispatched' AND lease_until < $1",
            ctx.clock(),
        )
        for row in rows:
            await fail_active(
                uow,
                "state = 'dispatched' AND agent_id = $1 AND lease_until < $2",
                [row["agent_id"], ctx.clock()],
                f"agent {row['agent_id']} never confirmed start",
            )


async def release_held_devices(ctx: Context) -> None:
    """Free phones still held for a run that ended here but was never reported ended.

    A stopped task keeps its phone busy until the agent reports the script's end; an
    agent that never started it has nothing to report. After the start timeout the
    phone is released with a TaskFailed in the task's history saying so.
    """
    grace = ctx.settings.scheduler_start_timeout_seconds
    held = (
        "SELECT t.* FROM devices d JOIN tasks t ON t.id = d.current_task_id"
        " WHERE d.busy AND t.state NOT IN ('dispatched', 'running')"
        " AND COALESCE(t.finished_at, t.dispatched_at) < now() - make_interval(secs => $1)"
    )
    if not await _any(ctx, held, grace):
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        rows = await uow.conn.fetch(held + " ORDER BY t.id FOR UPDATE OF t", grace)
        outcome = Outcome()
        for row in rows:
            task = Task(task_state(row))
            task.failed(
                row["dispatch_id"] or "",
                f"{row['reason'] or 'ended'}; agent {row['agent_id']} reported no end",
            )
            outcome.take(task)
        await uow.append(outcome.events)


async def prune_reports(ctx: Context) -> None:
    """Forget report ids older than REPORTS keeps messages: they cannot come back."""
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "DELETE FROM processed_reports WHERE recorded_at < now() - make_interval(secs => $1)",
            2 * REPORTS.max_age_seconds,
        )


async def run(ctx: Context, stopping: asyncio.Event, period: float = 1.0) -> None:
    next_prune = 0.0
    while not stopping.is_set():
        steps = [flush_heartbeats, declare_lost, expire_starts, release_held_devices]
        if time.monotonic() >= next_prune:
            next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            steps.append(prune_reports)
        for step in steps:
            try:
                await step(ctx)
            except Exception as exc:
                log.warning("liveness.step_failed", step=step.__name__, error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
