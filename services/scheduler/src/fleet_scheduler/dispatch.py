"""The dispatcher: claims every idle device's next due task and sends them to their agents.

A claim is one transaction holding the serial partitions this scheduler leases
(`partition_owners`; only those still leased to it once their locks are granted): read
all idle devices in them on live agents and their due tasks, let `schedule.decide`
choose, append TaskScheduled / TaskDispatched (the devices become busy in the same
commit). A create claims its own tasks on idle phones the same way inside its own
transaction (`claim_among`), and a batch of reports the phones whose runs it ended, so
they need not wait for a claim of their own.
Schedulers sharing a log claim in disjoint partitions side by side. Only after
the commit are the runs sent, so no scheduler sees the same task or device free: one `RunBatch`
request per agent (split only past a size bound), all agents at once, answered run by
run. The task turns running when the agent's TaskStartedReport arrives; a refused run
goes back to pending after a short back-off while the batch's other runs start; a run
its agent has not answered (or that a scheduler sent before it died) is sent again every
few seconds until it starts (the agent ignores a repeat, also of a run that ended), and
one never confirmed is failed by `liveness.expire_starts`. Partitions taken over from
another scheduler have their unconfirmed runs sent at once. A run the agent accepted is
not sent again by this process: the agent reports its start itself. An agent that does not answer
batches (one from before them: no responder on `agent.<id>.runs`) gets its runs one
RunTask at a time, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from asyncpg import Record
from nats.errors import NoRespondersError
from pydantic import ValidationError

from fleet_contracts.agent import AgentReply, RunBatch, RunBatchReply, RunTask
from fleet_contracts.messages import new_id
from fleet_contracts.subjects import agent_run_subject, agent_runs_subject
from fleet_runtime.failpoints import failpoint
from fleet_scheduler import task_leases
from fleet_scheduler.context import Context
from fleet_scheduler.errors import database_unavailable
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.schedule import Candidate, Dispatch, Reschedule, Slot, decide
from fleet_scheduler.store import ConcurrencyError, Metadata
from fleet_scheduler.task import Task
from fleet_scheduler.uow import UnitOfWork, unit_of_work

log = structlog.get_logger(__name__)

REFUSAL_BACKOFF = timedelta(seconds=2)
RUN_REQUEST_TIMEOUT = 5.0
RUN_REQUEST_ATTEMPTS = 3
RESEND_AFTER_SECONDS = 5.0
BATCH_MAX_RUNS = 1000
BATCH_MAX_BYTES = 512 * 1024
"""A RunBatch stays well under NATS's default 1 MiB payload: an agent's runs past either
bound go in a second request (a task's config can hold a 4,000-character caption)."""


NOT_LEASED = "NOT EXISTS (SELECT 1 FROM leases l WHERE l.serial = d.serial AND l.task_id IS NULL)"
"""A leased phone is busy: nothing is dispatched to it until its lease ends."""


def _due_on_idle(partitions: str) -> str:
    return (
        "SELECT t.id, t.serial, t.due_at, t.min_interval, t.max_interval, t.interval_anchor,"
        " d.agent_id, d.last_task_id, d.last_finished_at, a.incarnation, now() AS db_now"
        " FROM devices d JOIN agents a ON a.agent_id = d.agent_id"
        " CROSS JOIN LATERAL (SELECT t.id, t.serial, t.due_at, t.min_interval, t.max_interval,"
        "  t.interval_anchor FROM tasks t"
        "  WHERE t.serial = d.serial AND t.state = 'pending' AND NOT t.deleted"
        "  AND t.due_at <= $1 ORDER BY t.due_at, t.id LIMIT 1) t"
        " WHERE d.online AND NOT d.busy AND NOT a.lost"
        " AND a.last_seen >= now() - make_interval(secs => $2)"
        f" AND d.partition {partitions} AND {NOT_LEASED}"
    )


DUE_ON_IDLE_DEVICES = _due_on_idle("= ANY($3::smallint[])") + " ORDER BY d.serial"
"""Each idle device's oldest due task, for devices online on a live agent and not lent
to a program (a lease: `leases.py`). Driven by the idle devices, each probing `tasks_due`
(serial, due_at, id) for its first due task: the cost follows the idle devices, not the
pending tasks (a flood keeps thousands pending, and a due-time scan over all of them ran
on every wake-up). Due times are the scheduler's clock (`start_time`, intervals); the
agent's lease is the database's."""

DUE_AMONG_LEASED = (
    _due_on_idle(
        "IN (SELECT id FROM log_partitions WHERE owner = $3 AND lease_expires > clock_timestamp())"
    )
    + " AND d.serial = ANY($4::text[]) ORDER BY d.serial"
)
"""The same among the phones of `$4` (a create's), in the partitions `$3` leases: read
by a transaction that holds every partition's lock, so a takeover waits for it."""


@dataclass(frozen=True)
class Claim:
    run: RunTask
    agent_id: str


async def claim(ctx: Context) -> list[Claim]:
    """Decide and record what runs now; return the RunTasks to send."""
    now = ctx.clock()
    lease = ctx.settings.scheduler_agent_lease_seconds
    if not ctx.owned:
        return []
    # A read without the locks first: most wake-ups find nothing to do, and should not
    # queue behind the writers for the partitions' locks to learn that.
    async with ctx.pool.acquire() as conn:
        if not await conn.fetch(DUE_ON_IDLE_DEVICES + " LIMIT 1", now, lease, sorted(ctx.owned)):
            return []
    # Only the partitions this scheduler still leases when the locks are granted: one
    # taken over meanwhile is the new holder's to claim in.
    async with unit_of_work(
        ctx.pool,
        Metadata(correlation_id=new_id()),
        ctx.appended,
        partitions=ctx.owned,
        owner=ctx.settings.scheduler_id,
    ) as uow:
        if not uow.partitions:
            return []
        rows = await uow.conn.fetch(DUE_ON_IDLE_DEVICES, now, lease, sorted(uow.partitions))
        return await _claim_rows(uow, ctx, rows, now)


async def claim_among(uow: UnitOfWork, ctx: Context, serials: Collection[str]) -> list[Claim]:
    """In a transaction that holds the partitions' locks of `serials` (a create's, which
    holds every one; a batch of reports, which holds its tasks'): dispatch the due tasks
    of those phones that are idle, in the partitions this scheduler leases now, as a
    claim would right after the commit. The runs go out once it has committed (`send`).

    This saves a claim's own transaction and its wait for the partitions' locks: after
    a create on idle phones (at rest, a third of the way from create to start), and
    after each batch of reports for the phones whose runs it ended (in a flood, the
    claims were a quarter of the time the locks were held, and the reports waited for
    them). A phone in another scheduler's partition is left to it, as before."""
    if not ctx.owned or not serials:
        return []
    now = ctx.clock()
    lease = ctx.settings.scheduler_agent_lease_seconds
    owner = ctx.settings.scheduler_id
    rows = await uow.conn.fetch(DUE_AMONG_LEASED, now, lease, owner, sorted(serials))
    return await _claim_rows(uow, ctx, rows, now, Metadata(correlation_id=new_id()))


async def claim_in_savepoint(
    uow: UnitOfWork, ctx: Context, serials: Collection[str], after: str
) -> list[Claim]:
    """`claim_among` in a savepoint: should it fail, what the transaction did before
    still commits and the dispatcher claims those phones after, as it always can.
    `after`: what the transaction was for (the log line names it)."""
    if not serials:
        return []
    # Outside the savepoint: locks taken inside it would go with a rollback to it, while
    # the unit of work went on believing it held them.
    await uow.lock()
    kept = len(uow.appended)
    try:
        async with uow.conn.transaction():
            return await claim_among(uow, ctx, serials)
    except Exception as exc:
        if database_unavailable(exc):
            raise
        del uow.appended[kept:]  # rolled back with the savepoint
        uow.forget_tasks()  # the rows held may be ahead of it too
        log.warning("dispatch.claim_in_transaction_failed", after=after, error=repr(exc))
        return []


async def _claim_rows(
    uow: UnitOfWork,
    ctx: Context,
    rows: Sequence[Record],
    now: datetime,
    metadata: Metadata | None = None,
) -> list[Claim]:
    """Dispatch (or reschedule, per `schedule.decide`) the due tasks of `rows`, one per
    idle phone, leaving out the phones cooling off; the RunTasks to send after commit."""
    rows = [r for r in rows if ctx.cooling.get(r["serial"], now) <= now]
    if not rows:
        return []
    metadata = metadata or uow.metadata
    start_timeout = timedelta(seconds=ctx.settings.scheduler_start_timeout_seconds)
    incarnation = {r["agent_id"]: r["incarnation"] for r in rows}
    # The start timeout runs on the database's clock, like every lease.
    db_now: datetime = rows[0]["db_now"]
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
    states = await uow.load_tasks({d.task_id for d in decisions})
    tasks = {tid: Task(state) for tid, state in states.items()}
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
                            correlation_id=state.correlation_id or metadata.correlation_id,
                            incarnation=fence,
                        ),
                        decision.agent_id,
                    )
                )
    outcome = Outcome()
    for task in tasks.values():
        outcome.take(task)
    await uow.append(outcome.events, metadata)
    return await task_leases.equip(uow, claims)


def send(ctx: Context, claims: Sequence[Claim]) -> None:
    """Send committed claims beside the caller: one request per agent (`batches`)."""
    ctx.sending.update(item.run.dispatch_id for item in claims)
    for group in batches(claims):
        ctx.spawn(send_batch(ctx, group))


async def resend_unconfirmed(
    ctx: Context, in_flight: set[str], min_age: float = RESEND_AFTER_SECONDS
) -> list[Claim]:
    """RunTasks committed but not confirmed after a while, in the partitions this
    scheduler leases: sent again (but not those in `in_flight`: being sent, or accepted
    by their agent already).

    A scheduler killed between the claim's commit and the send leaves such tasks (its
    partitions' next holder sends them); the agent answers a repeated dispatch id as
    accepted without running it twice.
    """
    if not ctx.owned:
        return []
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, dispatch_id, serial, username, script_name, script_config, agent_id,"
            " correlation_id, incarnation"
            " FROM tasks WHERE state = 'dispatched' AND partition = ANY($2::smallint[])"
            " AND dispatched_at <= now() - make_interval(secs => $1) ORDER BY id LIMIT 500",
            min_age,
            sorted(ctx.owned),
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


def batches(
    claims: Iterable[Claim], max_runs: int = BATCH_MAX_RUNS, max_bytes: int = BATCH_MAX_BYTES
) -> list[list[Claim]]:
    """The claims grouped by agent, in claim order: one group per agent, cut only where
    it would pass `max_runs` runs or `max_bytes` of runs (a bigger run goes alone)."""
    groups: dict[str, list[list[Claim]]] = {}
    filled: dict[str, int] = {}
    for item in claims:
        size = len(item.run.to_bytes())
        own = groups.setdefault(item.agent_id, [[]])
        last = own[-1]
        if last and (len(last) >= max_runs or filled[item.agent_id] + size > max_bytes):
            own.append(last := [])
            filled[item.agent_id] = 0
        last.append(item)
        filled[item.agent_id] = filled.get(item.agent_id, 0) + size
    return [group for own in groups.values() for group in own]


def batch_replies(raw: bytes, runs: int) -> list[AgentReply] | None:
    """One reply per run, from an agent's RunBatchReply; None when it cannot be read so.

    A single refusal for many runs is the agent refusing the request as a whole (a batch
    it could not read): it stands for every run, as a refused RunTask would."""
    try:
        replies = RunBatchReply.model_validate_json(raw).replies
    except ValidationError as exc:
        log.warning("runs.unreadable_reply", error=str(exc))
        return None
    if len(replies) == runs:
        return replies
    if len(replies) == 1 and not replies[0].accepted:
        return replies * runs
    log.warning("runs.reply_mismatch", runs=runs, replies=len(replies))
    return None


async def send_batch(ctx: Context, items: list[Claim]) -> None:
    """Send one agent's runs in one request; each reply handled as a lone run's is.

    The runs the agent accepted go into `ctx.accepted` (with the time): this process
    does not send them again, since the agent has them and reports their start itself."""
    ids = [item.run.dispatch_id for item in items]
    ctx.sending.update(ids)
    try:
        now = time.monotonic()
        ctx.accepted.update((dispatch_id, now) for dispatch_id in await _send_batch(ctx, items))
    finally:
        ctx.sending.difference_update(ids)


async def still_current(ctx: Context, run: RunTask) -> bool:
    """Whether `run` is still the task's dispatch waiting for its start: a run the task
    has moved on from (failed as lost, stopped, started, requeued) is never sent again."""
    return bool(await current_runs(ctx, [run]))


async def current_runs(ctx: Context, runs: Sequence[RunTask]) -> set[str]:
    """The dispatch ids of `runs` that are still their task's dispatch waiting for its
    start (see `still_current`), in one query."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, dispatch_id FROM tasks WHERE id = ANY($1::bigint[])"
            " AND state = 'dispatched'",
            [run.task_id for run in runs],
        )
    current = {(r["id"], r["dispatch_id"]) for r in rows}
    return {run.dispatch_id for run in runs if (run.task_id, run.dispatch_id) in current}


async def _send_batch(ctx: Context, items: list[Claim]) -> list[str]:
    """Send, retry, handle the replies; the dispatch ids the agent accepted."""
    agent_id = items[0].agent_id
    pending = list(items)
    replies: list[AgentReply] | None = None
    for attempt in range(RUN_REQUEST_ATTEMPTS):
        if attempt:
            current = await current_runs(ctx, [item.run for item in pending])
            for item in pending:
                if item.run.dispatch_id not in current:
                    log.info(
                        "run.superseded", task_id=item.run.task_id, dispatch_id=item.run.dispatch_id
                    )
            pending = [item for item in pending if item.run.dispatch_id in current]
            if not pending:
                return []
        batch = RunBatch(runs=[item.run for item in pending])
        try:
            msg = await ctx.nc.request(
                agent_runs_subject(agent_id), batch.to_bytes(), timeout=RUN_REQUEST_TIMEOUT
            )
        except NoRespondersError:
            # Nobody listens for batches: an agent from before them, or none at all. One
            # RunTask a run then, each with its own retries, exactly as before batches.
            answers = await asyncio.gather(*(_send_run(ctx, item) for item in pending))
            return [item.run.dispatch_id for item, ok in zip(pending, answers, strict=True) if ok]
        except Exception as exc:
            # The agent answers a repeated run (same dispatch id) as accepted.
            log.info(
                "runs.no_answer",
                agent_id=agent_id,
                runs=len(pending),
                attempt=attempt,
                error=str(exc) or repr(exc),
            )
            if attempt + 1 < RUN_REQUEST_ATTEMPTS:
                await asyncio.sleep(0.5 * (attempt + 1))
            continue
        replies = batch_replies(msg.data, len(pending))
        if replies is not None:
            break
    if replies is None:
        return []  # unconfirmed: sent again later, or failed by the start timeout
    refused = [
        (item, reply) for item, reply in zip(pending, replies, strict=True) if not reply.accepted
    ]
    await asyncio.gather(*(_refused(ctx, item, reply) for item, reply in refused))
    return [
        item.run.dispatch_id for item, reply in zip(pending, replies, strict=True) if reply.accepted
    ]


async def _send_run(ctx: Context, item: Claim) -> bool:
    """One RunTask, as before batches; whether the agent accepted it."""
    run = item.run
    reply: AgentReply | None = None
    for attempt in range(RUN_REQUEST_ATTEMPTS):
        if attempt and not await still_current(ctx, run):
            log.info("run.superseded", task_id=run.task_id, dispatch_id=run.dispatch_id)
            return False
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
        return reply is not None
    await _refused(ctx, item, reply)
    return False


async def _refused(ctx: Context, item: Claim, reply: AgentReply) -> None:
    """The agent refused the run: the task waits again, its phone cools off a little."""
    run = item.run
    log.info("run.refused", task_id=run.task_id, agent_id=item.agent_id, reason=reply.reason)
    now = ctx.clock()
    ctx.cooling[run.serial] = now + REFUSAL_BACKOFF
    for _ in range(3):
        try:
            async with unit_of_work(
                ctx.pool, Metadata(run.correlation_id, run.message_id), ctx.appended
            ) as uow:
                state = (await uow.load_tasks([run.task_id])).get(run.task_id)
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
    # An accepted run is forgotten once its start timeout has failed it if need be.
    remember = ctx.settings.scheduler_start_timeout_seconds + RESEND_AFTER_SECONDS
    poll = ctx.settings.scheduler_dispatch_poll_seconds
    # At start every unconfirmed dispatch is sent again at once: this process sends
    # nothing yet, and one that died between a claim and its send left them unsent.
    next_resend = time.monotonic()
    first_pass = True
    while not stopping.is_set():
        ctx.dispatch_wake.clear()
        try:
            claims = await claim(ctx)
        except Exception as exc:
            log.warning("dispatch.claim_failed", error=str(exc))
            claims = []
        if claims:
            failpoint("dispatch.after_claim")
        send(ctx, claims)
        if ctx.taken.is_set():
            # Partitions just changed hands to us: their unconfirmed runs go at once.
            ctx.taken.clear()
            next_resend, first_pass = time.monotonic(), True
        if time.monotonic() >= next_resend:
            next_resend = time.monotonic() + RESEND_AFTER_SECONDS
            for dispatch_id in [
                d for d, at in ctx.accepted.items() if at < time.monotonic() - remember
            ]:
                del ctx.accepted[dispatch_id]
            try:
                age = 0.0 if first_pass else RESEND_AFTER_SECONDS
                skip = ctx.sending | set(ctx.accepted)
                send(ctx, await resend_unconfirmed(ctx, skip, age))
                first_pass = False
            except Exception as exc:
                log.warning("dispatch.resend_failed", error=str(exc))
        now = ctx.clock()
        for serial in [s for s, until in ctx.cooling.items() if until <= now]:
            del ctx.cooling[serial]
        if claims:
            continue  # more may be due at once
        waiter = asyncio.ensure_future(ctx.dispatch_wake.wait())
        stopper = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
