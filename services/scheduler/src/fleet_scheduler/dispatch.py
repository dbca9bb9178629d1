"""The dispatcher: claims each idle device's next due task and sends it to its agent.

A claim is one transaction under the events lock: read the idle devices on live agents
and their due tasks, let `schedule.decide` choose, append TaskScheduled /
TaskDispatched (the device becomes busy in the same commit). Only then is the RunTask
sent, so a second scheduler never sees the same task or device free. The task turns
running when the agent's TaskStartedReport arrives; a refusal puts it back to pending
after a short back-off; an unconfirmed run is sent again every few seconds (the agent
ignores a repeat), and one never confirmed is failed by `liveness.expire_starts`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from fleet_contracts.agent import AgentReply, RunTask
from fleet_contracts.messages import new_id
from fleet_contracts.subjects import agent_run_subject
from fleet_runtime.failpoints import failpoint
from fleet_scheduler import task_leases
from fleet_scheduler.context import Context
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.projections import load_tasks
from fleet_scheduler.schedule import Candidate, Dispatch, Reschedule, Slot, decide
from fleet_scheduler.store import ConcurrencyError, Metadata
from fleet_scheduler.task import Task
from fleet_scheduler.uow import unit_of_work

log = structlog.get_logger(__name__)

REFUSAL_BACKOFF = timedelta(seconds=2)
RUN_REQUEST_TIMEOUT = 5.0
RUN_REQUEST_ATTEMPTS = 3
RESEND_AFTER_SECONDS = 5.0


NOT_LEASED = "NOT EXISTS (SELECT 1 FROM leases l WHERE l.serial = t.serial AND l.task_id IS NULL)"
"""A leased phone is busy: nothing is dispatched to it until its lease ends."""

DUE_ON_IDLE_DEVICES = (
    "SELECT DISTINCT ON (t.serial) t.id, t.serial, t.due_at, t.min_interval,"
    " t.max_interval, t.interval_anchor, d.agent_id, d.last_task_id, d.last_finished_at,"
    " a.incarnation"
    " FROM tasks t JOIN devices d ON d.serial = t.serial"
    " JOIN agents a ON a.agent_id = d.agent_id"
    " WHERE t.state = 'pending' AND NOT t.deleted AND t.due_at <= $1"
    " AND d.online AND NOT d.busy AND NOT a.lost"
    " AND a.last_seen >= now() - make_interval(secs => $2)"
    f" AND {NOT_LEASED}"
    " ORDER BY t.serial, t.due_at, t.id"
)
"""Each idle device's oldest due task, for devices online on a live agent and not lent
to a program (a lease: `leases.py`). Due times are the scheduler's clock (`start_time`,
intervals); the agent's lease is the database's."""


@dataclass(frozen=True)
class Claim:
    run: RunTask
    agent_id: str


async def claim(ctx: Context, cooling: dict[str, datetime]) -> list[Claim]:
    """Decide and record what runs now; return the RunTasks to send."""
    now = ctx.clock()
    start_timeout = timedelta(seconds=ctx.settings.scheduler_start_timeout_seconds)
    args = (now, ctx.settings.scheduler_agent_lease_seconds)
    # A read without the lock first: most wake-ups find nothing to do, and should not
    # queue behind the writers for the events lock to learn that.
    async with ctx.pool.acquire() as conn:
        if not await conn.fetch(DUE_ON_IDLE_DEVICES + " LIMIT 1", *args):
            return []
    async with unit_of_work(ctx.pool, Metadata(correlation_id=new_id()), ctx.appended) as uow:
        conn = uow.conn
        rows = [
            r
            for r in await conn.fetch(DUE_ON_IDLE_DEVICES, *args)
            if cooling.get(r["serial"], now) <= now
        ]
        if not rows:
            return []
        incarnation = {r["agent_id"]: r["incarnation"] for r in rows}
        # The start timeout runs on the database's clock, like every lease.
        db_now: datetime = await conn.fetchval("SELECT now()")
        slots = [
            Slot(r["serial"], r["agent_id"], r["last_task_id"], r["last_finished_at"]) for r in rows
        ]
        candidates = [
            Candidate(
                r["id"],
                r["serial"],
                r["due_at"],
                r["min_interval"],
                r["max_interval"],
                r["interval_anchor"],
            )
            for r in rows
        ]
        decisions = decide(slots, candidates, now, ctx.rng)
        if not decisions:
            return []
        tasks = {
            tid: Task(state)
            for tid, state in (
                await load_tasks(conn, sorted({d.task_id for d in decisions}))
            ).items()
        }
        claims: list[Claim] = []
        for decision in decisions:
            task = tasks[decision.task_id]
            if isinstance(decision, Reschedule):
                task.schedule(decision.due_at, decision.reason, decision.after_task_id)
            elif isinstance(decision, Dispatch):
                dispatch_id = new_id()
                fence = incarnation[decision.agent_id]
                if task.dispatch(decision.agent_id, dispatch_id, db_now + start_timeout, fence):
                    state = task.state
                    claims.append(
                        Claim(
                            RunTask(
                                task_id=state.id,
                                dispatch_id=dispatch_id,
                                serial=state.serial,
                                username=state.username,
                                script_name=state.script_name,
                                script_config=state.script_config,
                                # the create request's id, so one id follows the task
                                correlation_id=state.correlation_id or uow.metadata.correlation_id,
                                incarnation=fence,
                            ),
                            decision.agent_id,
                        )
                    )
        outcome = Outcome()
        for task in tasks.values():
            outcome.take(task)
        await uow.append(outcome.events)
        claims = await task_leases.equip(uow, claims)
    return claims


async def resend_unconfirmed(
    ctx: Context, in_flight: set[str], min_age: float = RESEND_AFTER_SECONDS
) -> list[Claim]:
    """RunTasks committed but not confirmed after a while: sent again.

    A scheduler killed between the claim's commit and the send leaves such tasks; the
    agent answers a repeated dispatch id as accepted without running it twice.
    """
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, dispatch_id, serial, username, script_name, script_config, agent_id,"
            " correlation_id, incarnation"
            " FROM tasks WHERE state = 'dispatched'"
            " AND dispatched_at <= now() - make_interval(secs => $1) ORDER BY id LIMIT 500",
            min_age,
        )
    return [
        Claim(
            RunTask(
                task_id=r["id"],
                dispatch_id=r["dispatch_id"],
                serial=r["serial"],
                username=r["username"],
                script_name=r["script_name"],
                script_config=r["script_config"],
                correlation_id=r["correlation_id"] or new_id(),
                incarnation=r["incarnation"],
            ),
            r["agent_id"],
        )
        for r in rows
        if r["dispatch_id"] not in in_flight
    ]


async def send_run(
    ctx: Context, item: Claim, cooling: dict[str, datetime], in_flight: set[str]
) -> None:
    in_flight.add(item.run.dispatch_id)
    try:
        await _send_run(ctx, item, cooling)
    finally:
        in_flight.discard(item.run.dispatch_id)


async def still_current(ctx: Context, run: RunTask) -> bool:
    """Whether `run` is still the task's dispatch waiting for its start: a run the task
    has moved on from (failed as lost, stopped, started, requeued) is never sent again."""
    async with ctx.pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM tasks WHERE id = $1 AND dispatch_id = $2 AND state = 'dispatched'",
                run.task_id,
                run.dispatch_id,
            )
        )


async def _send_run(ctx: Context, item: Claim, cooling: dict[str, datetime]) -> None:
    run = item.run
    reply: AgentReply | None = None
    for attempt in range(RUN_REQUEST_ATTEMPTS):
        if attempt and not await still_current(ctx, run):
            log.info("run.superseded", task_id=run.task_id, dispatch_id=run.dispatch_id)
            return
        try:
            msg = await ctx.nc.request(
                agent_run_subject(item.agent_id), run.to_bytes(), timeout=RUN_REQUEST_TIMEOUT
            )
            reply = AgentReply.model_validate_json(msg.data)
            break
        except Exception as exc:
            # The agent answers a repeated RunTask (same dispatch id) as accepted.
            log.info("run.no_answer", task_id=run.task_id, attempt=attempt, error=str(exc))
            if attempt + 1 < RUN_REQUEST_ATTEMPTS:
                await asyncio.sleep(0.5 * (attempt + 1))
    if reply is None or reply.accepted:
        return
    log.info("run.refused", task_id=run.task_id, agent_id=item.agent_id, reason=reply.reason)
    now = ctx.clock()
    cooling[run.serial] = now + REFUSAL_BACKOFF
    for _ in range(3):
        try:
            async with unit_of_work(
                ctx.pool, Metadata(run.correlation_id, run.message_id), ctx.appended
            ) as uow:
                state = (await load_tasks(uow.conn, [run.task_id])).get(run.task_id)
                if state is None:
                    return
                task = Task(state)
                task.requeue(
                    run.dispatch_id, reply.reason or "agent refused", now + REFUSAL_BACKOFF
                )
                outcome = Outcome()
                outcome.take(task)
                await uow.append(outcome.events)
            return
        except ConcurrencyError:
            continue


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    cooling: dict[str, datetime] = {}
    in_flight: set[str] = set()
    poll = ctx.settings.scheduler_dispatch_poll_seconds
    # At start every unconfirmed dispatch is sent again at once: this process sends
    # nothing yet, and one that died between a claim and its send left them unsent.
    next_resend = time.monotonic()
    first_pass = True
    while not stopping.is_set():
        ctx.dispatch_wake.clear()
        try:
            claims = await claim(ctx, cooling)
        except Exception as exc:
            log.warning("dispatch.claim_failed", error=str(exc))
            claims = []
        if claims:
            failpoint("dispatch.after_claim")
        in_flight.update(item.run.dispatch_id for item in claims)
        for item in claims:
            ctx.spawn(send_run(ctx, item, cooling, in_flight))
        if time.monotonic() >= next_resend:
            next_resend = time.monotonic() + RESEND_AFTER_SECONDS
            try:
                age = 0.0 if first_pass else RESEND_AFTER_SECONDS
                for item in await resend_unconfirmed(ctx, in_flight, age):
                    ctx.spawn(send_run(ctx, item, cooling, in_flight))
                first_pass = False
            except Exception as exc:
                log.warning("dispatch.resend_failed", error=str(exc))
        now = ctx.clock()
        for serial in [s for s, until in cooling.items() if until <= now]:
            del cooling[serial]
        if claims:
            continue  # more may be due at once
        waiter = asyncio.ensure_future(ctx.dispatch_wake.wait())
        stopper = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
