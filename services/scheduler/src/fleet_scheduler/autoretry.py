"""The automatic retry loop: failed tasks the policy has not looked at yet get their
decision (`retry_policy.decide_retry`) recorded as a TaskRetried with `automatic: true`.

Runs beside the report handlers rather than inside them: a failure is recorded as
before, and this loop, on any scheduler replica, picks it up under the events lock
(the task row locked too), so two replicas never retry one failure twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import timedelta

import structlog

from fleet_runtime.logs import bind_correlation
from fleet_scheduler.context import Context
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.projections import task_state
from fleet_scheduler.retry_policy import decide_retry, policy_for
from fleet_scheduler.store import Metadata
from fleet_scheduler.task import Task
from fleet_scheduler.uow import unit_of_work

log = structlog.get_logger(__name__)

BATCH = 200
HORIZON = timedelta(hours=1)
"""Failures older than this are left alone (after a long outage, or a read-model rebuild)."""

# A failure whose phone is still held for it (its agent has not said the run ended) waits:
# the phone may yet report the run finished, and a retry then would post twice.
_UNCHECKED = (
    "FROM tasks t LEFT JOIN devices d ON d.serial = t.serial WHERE NOT t.retry_checked"
    " AND NOT COALESCE(d.busy AND d.current_task_id = t.id, false)"
)


async def retry_failed(ctx: Context) -> int:
    """Decide for every failure not looked at yet; returns how many were retried."""
    async with ctx.pool.acquire() as conn:
        if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 {_UNCHECKED})"):
            return 0
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        rows = await uow.conn.fetch(
            f"SELECT t.* {_UNCHECKED} ORDER BY t.id LIMIT $1 FOR UPDATE OF t", BATCH
        )
        now = ctx.clock()
        outcome = Outcome()
        for row in rows:
            recent = row["finished_at"] is not None and row["finished_at"] >= now - HORIZON
            if row["state"] != "failed" or row["deleted"] or not recent:
                continue
            policy = policy_for(row["retry_policy"], ctx.settings.retry_policy)
            decision = decide_retry(policy, row["reason_class"], row["auto_retries"], now, ctx.rng)
            if decision is None:
                continue
            task = Task(task_state(row))
            task.auto_retry(decision.due_at, decision.reason)
            # The retry belongs to the request that made the task: same correlation id.
            meta = Metadata(correlation_id=row["correlation_id"] or "")
            taken = len(outcome.events)
            outcome.take(task)
            outcome.events[taken:] = [replace(e, metadata=meta) for e in outcome.events[taken:]]
            with bind_correlation(row["correlation_id"], task_id=row["id"]):
                log.info("task.auto_retry", reason=decision.reason)
        await uow.conn.execute(
            "UPDATE tasks SET retry_checked = true WHERE id = ANY($1::bigint[])",
            [r["id"] for r in rows],
        )
        await uow.append(outcome.events)
        retried = len(outcome.events)
    return retried


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    period = ctx.settings.scheduler_retry_poll_seconds
    while not stopping.is_set():
        try:
            await retry_failed(ctx)
        except Exception as exc:
            log.warning("autoretry.step_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
