"""Partition leases: each scheduler's turn at taking, renewing and giving back serial
partitions (`ownership.plan` decides), and leaving cleanly.

A turn is one transaction on the database's clock: renew this scheduler's member row,
read the live members, lock the serial partitions' rows (in the order every writer
locks them, so a turn never deadlocks with a claim; it waits for claims in flight to
commit) and write the plan. Because the lease lives in the same row a claim locks, a
claim that locks its partitions with `owner=` (`uow.unit_of_work`) holds only those
still leased to it when its lock was granted: a scheduler whose lease ran out (paused,
cut off, about to be killed) can no longer claim there, with no clock of its own
involved.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import asyncpg
import structlog

from fleet_scheduler import partitions as parts
from fleet_scheduler.context import Context
from fleet_scheduler.ownership import PartitionLease, Plan, plan

log = structlog.get_logger(__name__)

LOCK_TIMEOUT = "2s"
"""A turn waiting longer than this for claims to commit gives up until the next one."""

WRITE_PLAN = (
    "UPDATE log_partitions SET owner = $1,"
    " lease_expires = $2::timestamptz + make_interval(secs => $3),"
    " epoch = epoch + CASE WHEN id = ANY($5::smallint[]) THEN 1 ELSE 0 END"
    " WHERE id = ANY($4::smallint[])"
)


async def turn(conn: asyncpg.Connection, member: str, lease_seconds: float) -> Plan:
    """Renew, take and give back; what this member holds afterwards is `plan.owned`."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(
            "INSERT INTO scheduler_members (scheduler_id, expires)"
            " VALUES ($1, clock_timestamp() + make_interval(secs => $2))"
            " ON CONFLICT (scheduler_id) DO UPDATE SET expires = EXCLUDED.expires",
            member,
            lease_seconds,
        )
        rows = await conn.fetch(
            "SELECT id, owner, lease_expires FROM log_partitions WHERE id <> $1"
            f" {parts.LOCK_ORDER_SQL} FOR UPDATE",
            parts.FLEET,
        )
        # Read after the locks were granted: a wait behind a claim must not make a
        # lease look younger than it is.
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        members = [
            r["scheduler_id"]
            for r in await conn.fetch(
                "SELECT scheduler_id FROM scheduler_members WHERE expires > $1", now
            )
        ]
        leases = [PartitionLease(r["id"], r["owner"], r["lease_expires"]) for r in rows]
        decided = plan(member, leases, members, now)
        if decided.owned:
            await conn.execute(
                WRITE_PLAN, member, now, lease_seconds, sorted(decided.owned), list(decided.take)
            )
        if decided.release:
            await conn.execute(
                "UPDATE log_partitions SET owner = NULL, lease_expires = NULL"
                " WHERE id = ANY($1::smallint[]) AND owner = $2",
                list(decided.release),
                member,
            )
    return decided


async def leave(conn: asyncpg.Connection, member: str) -> None:
    """Give every partition back and leave the members: the others take them at their
    next turn instead of waiting for the leases to run out."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(
            "SELECT id FROM log_partitions WHERE owner = $1"
            f" AND id <> $2 {parts.LOCK_ORDER_SQL} FOR UPDATE",
            member,
            parts.FLEET,
        )
        await conn.execute(
            "UPDATE log_partitions SET owner = NULL, lease_expires = NULL WHERE owner = $1",
            member,
        )
        await conn.execute("DELETE FROM scheduler_members WHERE scheduler_id = $1", member)


async def holders(conn: asyncpg.Connection) -> dict[int, str]:
    """Who holds each serial partition under a lease still running (partitions nobody
    holds are left out): what operators, tests and the bench look at."""
    rows = await conn.fetch(
        "SELECT id, owner FROM log_partitions WHERE id <> $1 AND owner IS NOT NULL"
        " AND lease_expires > clock_timestamp()",
        parts.FLEET,
    )
    return {r["id"]: r["owner"] for r in rows}


async def take_turn(ctx: Context) -> None:
    member = ctx.settings.scheduler_id
    async with ctx.pool.acquire() as conn:
        decided = await turn(conn, member, ctx.settings.scheduler_partition_lease_seconds)
    if decided.owned != ctx.owned:
        log.info(
            "partitions.owned",
            scheduler_id=member,
            owned=sorted(decided.owned),
            taken=list(decided.take),
            released=list(decided.release),
        )
    ctx.owned = decided.owned
    if decided.take:
        ctx.taken.set()
        ctx.dispatch_wake.set()


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    period = ctx.settings.scheduler_partition_lease_seconds / 4
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
        if stopping.is_set():
            break
        try:
            await take_turn(ctx)
        except Exception as exc:
            # The leases run out on their own; claims are fenced by the database.
            log.warning("partitions.turn_failed", error=str(exc) or repr(exc))
    try:
        async with ctx.pool.acquire() as conn:
            await leave(conn, ctx.settings.scheduler_id)
        ctx.owned = frozenset()
        log.info("partitions.left", scheduler_id=ctx.settings.scheduler_id)
    except Exception as exc:
        log.warning("partitions.leave_failed", error=str(exc) or repr(exc))
