"""Ending leases nobody renews, and the leases of custom-script runs that are over.

Every half second: a lease past its `expires_at` on the database clock gets a
LeaseExpired (the phone is free, and the dispatcher is woken for tasks that waited on
it); a lease made for a task's run whose dispatch is no longer active gets a
LeaseReleased. Either is appended under the events lock by whichever scheduler gets
there, and read again under it, so two schedulers never record one expiry twice.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from fleet_scheduler import leases
from fleet_scheduler.context import Context
from fleet_scheduler.session_commands import db_now, lease_of
from fleet_scheduler.store import Metadata
from fleet_scheduler.uow import unit_of_work

log = structlog.get_logger(__name__)

PERIOD_SECONDS = 0.5

OVER = (
    "SELECT l.* FROM leases l WHERE (l.task_id IS NULL AND l.expires_at <= clock_timestamp())"
    " OR (l.task_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = l.task_id"
    " AND t.dispatch_id = l.dispatch_id AND t.state IN ('dispatched', 'running')))"
)


async def end_leases(ctx: Context) -> int:
    async with ctx.pool.acquire() as conn:
        if not await conn.fetch(OVER + " LIMIT 1"):
            return 0
    async with unit_of_work(ctx.pool, Metadata(correlation_id="lease-expiry"), ctx.appended) as uow:
        rows = await uow.conn.fetch(OVER + " ORDER BY l.lease_id FOR UPDATE")
        now = await db_now(uow.conn)
        events = []
        for row in rows:
            lease = lease_of(row)
            assert lease is not None
            events.append(leases.run_ended(lease) if lease.task_id else leases.expire(lease, now))
        await uow.append(events)
    for row in rows:
        log.info("lease.ended", lease_id=row["lease_id"], serial=row["serial"], task=row["task_id"])
    return len(rows)


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await end_leases(ctx)
        except Exception as exc:
            log.warning("lease.expiry_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), PERIOD_SECONDS)
