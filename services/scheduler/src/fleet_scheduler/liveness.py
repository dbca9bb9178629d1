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

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from fleet_contracts.agent import DeviceInfo, Heartbeat
from fleet_contracts.events import DeviceDisconnected
from fleet_contracts.subjects import HEARTBEAT_WILDCARD, device_stream_id, heartbeat_subject
from fleet_scheduler import command_results
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
        if msg.subject != heartbeat_subject(beat.agent_id):
            log.error("heartbeat.refused", subject=msg.subject, agent_id=beat.agent_id)
            return
        ctx.heartbeats[beat.agent_id] = AgentSeen(
            ctx.clock(), beat.host, list(beat.devices), beat.incarnation, beat.interval_seconds
        )

    await ctx.nc.subscribe(HEARTBEAT_WILDCARD, cb=on_beat)


async def flush_heartbeats(ctx: Context) -> None:
    """Write what was heard; phones of an agent declared lost come back online when it
    beats again and still holds them; runs are reconciled with what the agent says it
    holds (`reconcile_runs`)."""
    heard, ctx.heartbeats = ctx.heartbeats, {}
    if not heard:
        return
    agents = sorted(heard)
    async with ctx.pool.acquire() as conn:
        # Database time, not this replica's clock: every lease is read on one clock.
        await conn.execute(
            "INSERT INTO agents (agent_id, host, last_seen, lost, incarnation)"
            " SELECT a, h, now(), false, i FROM unnest($1::text[], $2::text[], $3::text[])"
            " AS x(a, h, i) ON CONFLICT (agent_id) DO UPDATE SET host = EXCLUDED.host,"
            " last_seen = GREATEST(agents.last_seen, now()), lost = false,"
            " incarnation = CASE WHEN EXCLUDED.incarnation = '' THEN agents.incarnation"
            " ELSE EXCLUDED.incarnation END",
            agents,
            [heard[a].host for a in agents],
            [heard[a].incarnation for a in agents],
        )
        pairs = [(a, d.serial) for a in agents for d in heard[a].devices]
        back = await conn.fetch(BACK_ONLINE, [p[0] for p in pairs], [p[1] for p in pairs])
    if back:
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
    await reconcile_runs(ctx, heard)


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
    lease = ctx.settings.scheduler_agent_lease_seconds
    if time.monotonic() - ctx.started_monotonic < lease:
        return  # just started: agents have not had a lease's time to be heard yet
    silent = "NOT lost AND last_seen < now() - make_interval(secs => $1)"
    if not await _any(ctx, f"SELECT 1 FROM agents WHERE {silent}", lease):
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        lost = await uow.conn.fetch(
            "SELECT agent_id, extract(epoch FROM now() - last_seen)::int AS silent"
            f" FROM agents WHERE {silent} ORDER BY agent_id FOR UPDATE",
            lease,
        )
        for agent in lost:
            agent_id = agent["agent_id"]
            await uow.conn.execute("UPDATE agents SET lost = true WHERE agent_id = $1", agent_id)
            failed = await fail_active(
                uow,
                "agent_id = $1",
                [agent_id],
                f"agent lost: {agent_id} sent no heartbeat for {agent['silent']}s",
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
            log.warning(
                "agent.lost", agent_id=agent_id, silent_seconds=agent["silent"], failed=failed
            )


async def expire_starts(ctx: Context) -> None:
    """Fail dispatched tasks whose agent never confirmed the start within the timeout
    (`lease_until` was set on the database's clock at dispatch, and is read on it)."""
    expired = "state = 'dispatched' AND lease_until < now()"
    if not await _any(ctx, f"SELECT 1 FROM tasks WHERE {expired}"):
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        rows = await uow.conn.fetch(f"SELECT DISTINCT agent_id FROM tasks WHERE {expired}")
        for row in rows:
            await fail_active(
                uow,
                f"{expired} AND agent_id = $1",
                [row["agent_id"]],
                f"agent {row['agent_id']} never confirmed start",
            )


HELD_BY_ENDED = (
    "SELECT t.*, d.serial AS held_serial FROM devices d JOIN tasks t"
    " ON t.id = d.current_task_id"
    " WHERE d.busy AND d.agent_id = ANY($1::text[]) AND t.state NOT IN ('dispatched', 'running')"
)
LOST_BY_AGENTS = (
    "SELECT * FROM tasks WHERE state = 'failed' AND ended_by = 'lost' AND NOT deleted"
    " AND id = ANY($1::bigint[]) AND agent_id = ANY($2::text[])"
)


async def reconcile_runs(ctx: Context, heard: dict[str, AgentSeen]) -> None:
    """Make the record agree with the runs live agents say they hold.

    - a phone held for a task that has ended is freed once its agent's heartbeat says it
      runs nothing of that task (and the end is older than two beats, so a beat sent
      before the run began cannot free it);
    - a task failed as lost that a phone is running after all is running again (as if
      the agent had reported it started: see `late`);
    - a running task its agent does not hold is marked, and failed after a grace by
      `fail_unheld` (its outcome report may have aged out of REPORTS).
    """
    agents = sorted(heard)
    holds: dict[int, tuple[str, str | None]] = {}
    for agent_id in agents:
        for status in heard[agent_id].devices:
            if status.busy and status.task_id is not None:
                holds[status.task_id] = (agent_id, status.dispatch_id)
    interval = max(seen.interval_seconds for seen in heard.values())
    async with ctx.pool.acquire() as conn:
        # Bookkeeping beside the log, without the events lock: rows a writer holds are
        # skipped (and seen at the next flush) rather than waited for, so this cannot
        # deadlock with a transaction locking the same tasks in another order.
        await conn.execute(
            "UPDATE tasks SET unheld_since = NULL WHERE id IN (SELECT id FROM tasks"
            " WHERE state = 'running' AND unheld_since IS NOT NULL AND id = ANY($1::bigint[])"
            " FOR UPDATE SKIP LOCKED)",
            list(holds),
        )
        await conn.execute(
            "UPDATE tasks SET unheld_since = now() WHERE id IN (SELECT id FROM tasks"
            " WHERE state = 'running' AND unheld_since IS NULL AND agent_id = ANY($1::text[])"
            " AND NOT (id = ANY($2::bigint[])) FOR UPDATE SKIP LOCKED)",
            agents,
            list(holds),
        )
        held = [
            r
            for r in await conn.fetch(
                HELD_BY_ENDED + " AND t.finished_at < now() - make_interval(secs => $2)",
                agents,
                2 * interval,
            )
            if r["id"] not in holds
        ]
        running = await conn.fetch(LOST_BY_AGENTS + " LIMIT 1", list(holds), agents)
    if not held and not running:
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        outcome = Outcome()
        freed = await uow.conn.fetch(
            HELD_BY_ENDED + " AND t.finished_at < now() - make_interval(secs => $2)"
            " AND NOT (t.id = ANY($3::bigint[])) ORDER BY t.id FOR UPDATE OF t",
            agents,
            2 * interval,
            list(holds),
        )
        for row in freed:
            task = Task(task_state(row))
            task.released(row["dispatch_id"] or "", f"agent {row['agent_id']} runs nothing of it")
            outcome.take(task)
        for row in await uow.conn.fetch(
            LOST_BY_AGENTS + " ORDER BY id FOR UPDATE", list(holds), agents
        ):
            agent_id, dispatch_id = holds[row["id"]]
            if row["agent_id"] != agent_id or (dispatch_id and dispatch_id != row["dispatch_id"]):
                continue
            task = Task(task_state(row))
            task.started(row["dispatch_id"] or "")
            outcome.take(task)
        await uow.append(outcome.events)


async def fail_unheld(ctx: Context) -> None:
    """Fail running tasks that their live agent has not held for a lease's time: heard
    for that long after the first beat without the task (each beat with it clears the
    mark), so a silent agent is left to `declare_lost`."""
    grace = ctx.settings.scheduler_agent_lease_seconds
    unheld = (
        "state = 'running' AND unheld_since IS NOT NULL AND EXISTS (SELECT 1 FROM agents a"
        " WHERE a.agent_id = tasks.agent_id AND NOT a.lost"
        " AND a.last_seen - tasks.unheld_since > make_interval(secs => $1))"
    )
    if not await _any(ctx, f"SELECT 1 FROM tasks WHERE {unheld}", grace):
        return
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        rows = await uow.conn.fetch(f"SELECT DISTINCT agent_id FROM tasks WHERE {unheld}", grace)
        for row in rows:
            await fail_active(
                uow,
                f"{unheld} AND agent_id = $2",
                [grace, row["agent_id"]],
                f"agent lost: {row['agent_id']} no longer runs it and reported no end",
            )


async def prune_results(ctx: Context) -> None:
    """Forget command results and report ids past the idempotency horizon: the streams
    cannot deliver those messages again (the settings must exceed their max age)."""
    settings = ctx.settings
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "DELETE FROM processed_reports WHERE recorded_at < now() - make_interval(secs => $1)",
            settings.scheduler_report_ids_keep_seconds,
        )
        await command_results.prune(conn, settings.scheduler_command_results_keep_seconds)


async def run(ctx: Context, stopping: asyncio.Event, period: float = 1.0) -> None:
    next_prune = 0.0
    while not stopping.is_set():
        steps = [flush_heartbeats, declare_lost, expire_starts, fail_unheld]
        if time.monotonic() >= next_prune:
            next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            steps.append(prune_results)
        for step in steps:
            try:
                await step(ctx)
            except Exception as exc:
                log.warning("liveness.step_failed", step=step.__name__, error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
