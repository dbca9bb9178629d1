"""Agent liveness: heartbeats heard, agents declared lost, starts never confirmed.

Heartbeats arrive on core NATS at every scheduler replica; each keeps them in memory
and flushes the newest time per agent to the agents table every second, so the
database write rate does not grow with the number of agents' beats. Declaring an
agent lost is done from that table, under row locks, by whichever replica gets there.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from fleet_contracts.agent import DeviceInfo, Heartbeat
from fleet_contracts.events import DeviceDisconnected
from fleet_contracts.subjects import HEARTBEAT_WILDCARD, device_stream_id

from fleet_scheduler.context import AgentSeen, Context
from fleet_scheduler.reports import connected_event, fail_active
from fleet_scheduler.store import NewEvent
from fleet_scheduler.uow import unit_of_work

log = structlog.get_logger(__name__)


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
    """Write what was heard; an agent that had been declared lost gets its devices back."""
    heard, ctx.heartbeats = ctx.heartbeats, {}
    if not heard:
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        for agent_id, seen in sorted(heard.items()):
            was_lost = await uow.conn.fetchval(
                "SELECT lost FROM agents WHERE agent_id = $1 FOR UPDATE", agent_id
            )
            await uow.conn.execute(
                "INSERT INTO agents (agent_id, host, last_seen, lost) VALUES ($1, $2, $3, false)"
                " ON CONFLICT (agent_id) DO UPDATE SET host = $2,"
                " last_seen = GREATEST(agents.last_seen, $3), lost = false",
                agent_id,
                seen.host,
                seen.last_seen,
            )
            await uow.conn.execute(
                "UPDATE devices SET last_seen = $2 WHERE agent_id = $1", agent_id, seen.last_seen
            )
            if was_lost and seen.devices:
                offline = await uow.conn.fetch(
                    "SELECT serial, model, android_version, battery FROM devices"
                    " WHERE agent_id = $1 AND NOT online AND serial = ANY($2::text[])",
                    agent_id,
                    [d.serial for d in seen.devices],
                )
                await uow.append(
                    [
                        connected_event(
                            agent_id,
                            seen.host,
                            DeviceInfo(
                                serial=r["serial"],
                                model=r["model"],
                                android_version=r["android_version"],
                                battery=r["battery"],
                            ),
                        )
                        for r in offline
                    ]
                )
                log.info("agent.back", agent_id=agent_id, devices=len(offline))


async def declare_lost(ctx: Context) -> None:
    now = ctx.clock()
    lease = ctx.settings.scheduler_agent_lease_seconds
    if now - ctx.started_at < timedelta(seconds=lease):
        return  # just started: agents have not had a lease's time to be heard yet
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
                        DeviceDisconnected(serial=d["serial"], agent_id=agent_id, reason="agent lost"),
                    )
                    for d in devices
                ]
            )
            log.warning("agent.lost", agent_id=agent_id, silent_seconds=silent, failed=failed)


async def expire_starts(ctx: Context) -> None:
    """Fail dispatched tasks whose agent never confirmed the start within the timeout."""
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


async def run(ctx: Context, stopping: asyncio.Event, period: float = 1.0) -> None:
    while not stopping.is_set():
        for step in (flush_heartbeats, declare_lost, expire_starts):
            try:
                await step(ctx)
            except Exception as exc:
                log.warning("liveness.step_failed", step=step.__name__, error=str(exc))
        try:
            await asyncio.wait_for(stopping.wait(), period)
        except TimeoutError:
            pass
