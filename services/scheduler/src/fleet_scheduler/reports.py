"""What agents observed (REPORTS stream), turned into events.

Each report is handled once: its message id is recorded in the transaction that
appends its events, and the message is acked after commit. A fetched batch of reports
shares one transaction.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import asyncpg
import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from fleet_contracts.agent import (
    AccountsReport,
    AgentStartedReport,
    AnyReport,
    DeviceConnectedReport,
    DeviceDisconnectedReport,
    DeviceInfo,
    Report,
    TaskCompletedReport,
    TaskFailedReport,
    TaskProgressReport,
    TaskStartedReport,
    parse_reports,
)
from fleet_contracts.events import (
    AccountsReported,
    DeviceConnected,
    DeviceDisconnected,
    TaskCompleted,
    TaskFailed,
)
from fleet_contracts.subjects import (
    SCHEDULER_REPORTS_CONSUMER,
    device_stream_id,
    task_stream_id,
    token,
    untoken,
)
from fleet_runtime.failpoints import failpoint
from fleet_runtime.logs import bind_correlation
from fleet_scheduler import dispatch, metrics
from fleet_scheduler import partitions as parts
from fleet_scheduler.consumer import pull_loop
from fleet_scheduler.context import Context
from fleet_scheduler.errors import database_unavailable
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.store import ConcurrencyError, Metadata, NewEvent
from fleet_scheduler.task import Task
from fleet_scheduler.uow import UnitOfWork, unit_of_work

log = structlog.get_logger(__name__)


def connected_event(agent_id: str, host: str, device: DeviceInfo) -> NewEvent:
    return NewEvent(
        device_stream_id(device.serial),
        DeviceConnected(
            serial=device.serial,
            agent_id=agent_id,
            host=host,
            model=device.model,
            android_version=device.android_version,
            battery=device.battery,
        ),
    )


async def fail_active(uow: UnitOfWork, where: str, args: list[object], reason: str) -> list[int]:
    """Fail every dispatched or running task matching `where` ($1.. = args)."""
    states = await uow.load_tasks_where(f"state IN ('dispatched', 'running') AND {where}", args)
    outcome = Outcome()
    for state in states:
        task = Task(state)
        task.lost(reason)
        outcome.take(task)
    await uow.append(outcome.events)
    return [state.id for state in states]


async def upsert_agent(
    conn: asyncpg.Connection, agent_id: str, host: str, incarnation: str = ""
) -> None:
    """The agent was heard now (database time: the one clock every lease is read on)."""
    await conn.execute(
        "INSERT INTO agents (agent_id, host, last_seen, lost, incarnation)"
        " VALUES ($1, $2, now(), false, $3)"
        " ON CONFLICT (agent_id) DO UPDATE SET host = $2,"
        " last_seen = GREATEST(agents.last_seen, now()), lost = false,"
        " incarnation = CASE WHEN $3 = '' THEN agents.incarnation ELSE $3 END",
        agent_id,
        host,
        incarnation,
    )


async def _agent_started(uow: UnitOfWork, ctx: Context, report: AgentStartedReport) -> None:
    await upsert_agent(uow.conn, report.agent_id, report.host, report.incarnation)
    # Runs handed to an earlier process of this agent died with it (that process is gone,
    # and this one refuses runs addressed to it). An agent that does not name its
    # process: every run it had before this report.
    if report.incarnation:
        await fail_active(
            uow,
            "agent_id = $1 AND incarnation <> $2",
            [report.agent_id, report.incarnation],
            f"agent lost: {report.agent_id} restarted",
        )
    else:
        await fail_active(
            uow, "agent_id = $1", [report.agent_id], f"agent lost: {report.agent_id} restarted"
        )
    listed = {d.serial for d in report.devices}
    rows = await uow.conn.fetch(
        "SELECT * FROM devices WHERE agent_id = $1 OR serial = ANY($2::text[])",
        report.agent_id,
        list(listed),
    )
    known = {r["serial"]: r for r in rows}
    events: list[NewEvent] = []
    for serial, row in known.items():
        if serial not in listed and row["agent_id"] == report.agent_id and row["online"]:
            events.append(
                NewEvent(
                    device_stream_id(serial),
                    DeviceDisconnected(
                        serial=serial, agent_id=report.agent_id, reason="not attached at restart"
                    ),
                )
            )
    for device in report.devices:
        row = known.get(device.serial)
        unchanged = row is not None and (
            row["online"]
            and row["agent_id"] == report.agent_id
            and row["host"] == report.host
            and row["model"] == device.model
            and row["android_version"] == device.android_version
            and row["battery"] == device.battery
        )
        if row is not None and row["busy"]:
            # A run the device was held for (e.g. one being stopped) ended with the
            # restart: cycling the device frees it.
            events.append(
                NewEvent(
                    device_stream_id(device.serial),
                    DeviceDisconnected(
                        serial=device.serial, agent_id=report.agent_id, reason="agent restarted"
                    ),
                )
            )
            unchanged = False
        if not unchanged:
            events.append(connected_event(report.agent_id, report.host, device))
    await uow.append(events)


TaskReport = TaskStartedReport | TaskProgressReport | TaskCompletedReport | TaskFailedReport
R = TypeVar("R", bound=Report)
T = TypeVar("T")
TASK_REPORTS = (TaskStartedReport, TaskProgressReport, TaskCompletedReport, TaskFailedReport)
REPORTS_PER_TRANSACTION = 128
"""Agents batch their reports, so 64 fetched messages can hold thousands: while a
command is in hand (`Context.commands_in_hand`: a create needs every partition's lock),
they are applied at most 128 to a transaction, so the locks are not held long.
128, not 64: one agent's starts of a 100-run batch then land in one transaction (at 64
the last 36 waited some 10 to 20 ms for the next one, which was the spread between
dispatch p50 and p99 at rest), and a flood ran 5 to 10 % faster end to end; creates
under the flood were slower (2,900 against 3,800 tasks/s), as they wait for each report
transaction's locks, which is why the size drops back while a command is in hand."""
REPORTS_PER_QUIET_TRANSACTION = 512
"""With no command in hand, 512 to a transaction. The REPORTS loop is the chain a flood
waits on (one transaction after another, busy 99 % of a flood of 20,000 tasks), and each
transaction waits for the claims and creates holding the locks before it, whatever its
size. In five alternating pairs of floods, 512 against 128 throughout: +4 to +17 % end
to end, flood dispatch p99 down 6 to 7 %, creates during the flood unchanged; 1,024 was
no better. 256 throughout instead had creates 23 % slower."""


def report_batches(reports: list[T], in_hand: Callable[[], bool]) -> Iterator[list[T]]:
    """`reports` in order, cut into transactions' worth, each sized when it is taken
    (`in_hand`: is a command being applied now, and so waiting for or holding every
    partition's lock?)."""
    start = 0
    while start < len(reports):
        size = REPORTS_PER_TRANSACTION if in_hand() else REPORTS_PER_QUIET_TRANSACTION
        yield reports[start : start + size]
        start += size


def _apply_to(task: Task, report: TaskReport) -> None:
    match report:
        case TaskStartedReport():
            task.started(report.dispatch_id)
        case TaskProgressReport():
            task.progressed(report.dispatch_id, report.step, report.percent, report.message)
        case TaskCompletedReport():
            task.completed(report.dispatch_id, report.result)
        case TaskFailedReport():
            reason = "stopped" if report.stopped else report.reason
            task.failed(report.dispatch_id, reason, report.screenshot)


async def _task_reports(uow: UnitOfWork, reports: list[TaskReport]) -> None:
    """Apply a run of task reports with one read and one append.

    A thousand phones send a lot of these; a statement per report was the scheduler's
    bottleneck. Each event still carries the ids of the report that caused it.
    """
    states = await uow.load_tasks({r.task_id for r in reports})
    tasks = {tid: Task(state) for tid, state in states.items()}
    events: list[NewEvent] = []
    for report in reports:
        task = tasks.get(report.task_id)
        if task is None:
            log.warning(
                "report.unknown_task",
                task_id=report.task_id,
                report=report.type,
                correlation_id=report.correlation_id,
            )
            continue
        before = len(task.pending)
        _apply_to(task, report)
        meta = metadata_for(report)
        events += [
            NewEvent(
                task_stream_id(task.id),
                event,
                expected_version=task.loaded_version + i,
                metadata=meta,
            )
            for i, event in enumerate(task.pending[before:], start=before)
        ]
    await uow.append(events)


async def _accounts_reports(uow: UnitOfWork, reports: list[AccountsReport]) -> None:
    """Apply a run of accounts reports with one append (`projections` writes the
    accounts they leave set-wise): an agent starting with a thousand phones sends one
    for each, after its `agent.started`."""
    if reports:
        await uow.append([_accounts_event(r, metadata_for(r)) for r in reports])


def _accounts_event(report: AccountsReport, metadata: Metadata | None = None) -> NewEvent:
    return NewEvent(
        device_stream_id(report.serial),
        AccountsReported(serial=report.serial, agent_id=report.agent_id, accounts=report.accounts),
        metadata=metadata,
    )


def _freed(uow: UnitOfWork) -> set[str]:
    """The phones whose runs the events appended so far ended."""
    ended = {
        event.task_id
        for rec in uow.appended
        if isinstance(event := rec.event(), TaskCompleted | TaskFailed)
    }
    return {row.serial for task_id in ended if (row := uow.held.rows.get(task_id))}


async def _fresh(uow: UnitOfWork, reports: list[R]) -> list[R]:
    """The reports not applied before, each once (JetStream may redeliver any)."""
    unique = list({r.message_id: r for r in reports}.values())
    rows = await uow.conn.fetch(
        "INSERT INTO processed_reports (message_id) SELECT unnest($1::text[])"
        " ON CONFLICT DO NOTHING RETURNING message_id",
        [r.message_id for r in unique],
    )
    fresh = {r["message_id"] for r in rows}
    return [r for r in unique if r.message_id in fresh]


async def apply_report(uow: UnitOfWork, ctx: Context, report: AnyReport) -> None:
    match report:
        case AgentStartedReport():
            await _agent_started(uow, ctx, report)
        case DeviceConnectedReport():
            await upsert_agent(uow.conn, report.agent_id, report.host)
            await uow.append([connected_event(report.agent_id, report.host, report.device)])
        case DeviceDisconnectedReport():
            await fail_active(uow, "serial = $1", [report.serial], "device disconnected")
            await uow.append(
                [
                    NewEvent(
                        device_stream_id(report.serial),
                        DeviceDisconnected(
                            serial=report.serial, agent_id=report.agent_id, reason=report.reason
                        ),
                    )
                ]
            )
        case AccountsReport():
            await uow.append([_accounts_event(report)])
        case _:
            await _task_reports(uow, [report])


def metadata_for(report: AnyReport) -> Metadata:
    return Metadata(
        correlation_id=report.correlation_id,
        causation_id=report.message_id,
        actor=agent_actor(report.agent_id),
    )


def agent_actor(agent_id: str) -> str:
    return f"agent:{agent_id}"


async def _apply_once(uow: UnitOfWork, ctx: Context, report: AnyReport) -> bool:
    if not await _fresh(uow, [report]):
        return False
    uow.metadata = metadata_for(report)
    with bind_correlation(report.correlation_id, report=report.type, agent_id=report.agent_id):
        await apply_report(uow, ctx, report)
    return True


async def handle_report(ctx: Context, report: AnyReport) -> bool:
    """Apply `report` once; False when its id was handled before."""
    for attempt in range(5):
        try:
            async with unit_of_work(ctx.pool, metadata_for(report), ctx.appended) as uow:
                return await _apply_once(uow, ctx, report)
        except ConcurrencyError as exc:
            log.info("report.conflict", attempt=attempt, error=str(exc))
        except Exception as exc:
            if database_unavailable(exc):
                raise
            # What the agent sent cannot be applied; redelivering it would block every
            # report behind it, so it is logged with its content and passed over.
            log.error("report.skipped", report=report.model_dump(mode="json"), exc_info=exc)
            return False
    raise RuntimeError(f"report {report.message_id} kept conflicting")


async def partitions_of(ctx: Context, reports: list[AnyReport]) -> set[int] | None:
    """The partitions a batch of task reports writes (its tasks' phones'); None, every
    partition, when it holds any other report. From the phones the reports name when
    all do; else read before the locks are taken (a task's partition never changes: its
    serial does not). A report naming another phone than its task's, whose partition
    the batch then does not hold, fails the batch when it appends
    (`uow.PartitionNotLocked`): it is applied again report by report."""
    if not all(isinstance(report, TASK_REPORTS) for report in reports):
        return None
    serials = {report.serial for report in reports if isinstance(report, TASK_REPORTS)}
    count = ctx.partition_count
    if count and None not in serials:
        return {parts.of_serial(serial, count) for serial in serials if serial is not None}
    ids = [report.task_id for report in reports if isinstance(report, TASK_REPORTS)]
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT partition FROM tasks WHERE id = ANY($1::bigint[])", ids
        )
    return {int(r["partition"]) for r in rows}


_TASK_RUN = "task reports"
_ACCOUNTS_RUN = "accounts reports"
_ALONE = "alone"


def _run_kind(report: AnyReport) -> str:
    """How `report` is applied: in a run of task reports, in a run of accounts reports,
    or alone (`_apply_once`)."""
    if isinstance(report, TASK_REPORTS):
        return _TASK_RUN
    return _ACCOUNTS_RUN if isinstance(report, AccountsReport) else _ALONE


async def handle_reports(ctx: Context, reports: list[AnyReport]) -> None:
    """Apply a batch (`report_batches` cuts a fetch into them) in one transaction, runs of
    task reports together and runs of accounts reports together (`_run_kind`); on a
    conflict, each report again alone. A batch of task reports locks only its tasks'
    partitions, so it does not wait for claims and reports of the others, and dispatches
    the phones whose runs it ended (`dispatch.claim_among`) before it commits."""
    try:
        partitions = await partitions_of(ctx, reports)
        async with unit_of_work(ctx.pool, on_commit=ctx.appended, partitions=partitions) as uow:
            for kind, group in itertools.groupby(reports, key=_run_kind):
                batch = list(group)
                if kind == _TASK_RUN:
                    await _task_reports(uow, await _fresh(uow, cast(list[TaskReport], batch)))
                elif kind == _ACCOUNTS_RUN:
                    accounts = cast(list[AccountsReport], batch)
                    await _accounts_reports(uow, await _fresh(uow, accounts))
                else:
                    for report in batch:
                        await _apply_once(uow, ctx, report)
            claims: list[dispatch.Claim] = []
            if partitions is not None:
                # The phones whose runs ended here get their next due task now, under
                # the locks this batch holds (their tasks' partitions).
                claims = await dispatch.claim_in_savepoint(uow, ctx, _freed(uow), "reports")
        if claims:
            failpoint("dispatch.after_claim")
            dispatch.send(ctx, claims)
        return
    except ConcurrencyError as exc:
        log.info("report.batch_conflict", size=len(reports), error=str(exc))
    except Exception as exc:
        if database_unavailable(exc):
            raise
        log.warning("report.batch_failed", size=len(reports), error=repr(exc))
    for report in reports:
        await handle_report(ctx, report)


def _readable(msg: Msg) -> list[AnyReport]:
    """The reports one message carries (an agent's batch holds many)."""
    try:
        return parse_reports(msg.data)
    except ValidationError as exc:
        log.warning("report.unreadable", subject=msg.subject, error=str(exc))
        return []


def sender_mismatch(subject: str, report: AnyReport) -> str | None:
    """Why a report cannot be believed: its subject (which NATS permissions tie to the
    sending host) names another agent than its body. None when they agree."""
    parts = subject.split(".")
    named = parts[1] if len(parts) >= 3 and parts[0] == "report" else None
    if named == token(report.agent_id):
        return None
    return (
        f"subject {subject!r} names agent {untoken(named) if named else '(none)'!r},"
        f" body names {report.agent_id!r}"
    )


async def refuse(ctx: Context, subject: str, report: AnyReport, reason: str) -> None:
    """Record a refused report (never applied) where an operator can find it."""
    with bind_correlation(report.correlation_id, report=report.type, agent_id=report.agent_id):
        log.error("report.refused", subject=subject, reason=reason, message_id=report.message_id)
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO refused_reports (subject, agent_id, message_id, reason)"
            " VALUES ($1, $2, $3, $4)",
            subject,
            report.agent_id,
            report.message_id,
            reason,
        )


async def trusted(ctx: Context, msgs: list[Msg]) -> tuple[list[AnyReport], list[int]]:
    """The readable reports whose subject and body name the same agent, in order, and
    for each message how many of them it and the messages before it hold."""
    out: list[AnyReport] = []
    ends: list[int] = []
    for msg in msgs:
        for report in _readable(msg):
            reason = sender_mismatch(msg.subject, report)
            if reason is not None:
                await refuse(ctx, msg.subject, report, reason)
                continue
            out.append(report)
        ends.append(len(out))
    return out, ends


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    async def handle(msgs: list[Msg]) -> None:
        reports, ends = await trusted(ctx, msgs)
        applied = done = 0
        for batch in report_batches(reports, lambda: ctx.commands_in_hand > 0):
            await handle_reports(ctx, batch)
            done += len(batch)
            # A message is applied once its last report is: with a fetch taking hundreds
            # of ms in a flood, timing every message at the fetch's end would add up to
            # that much to the waits of those applied early in it.
            through = bisect.bisect_right(ends, done)
            metrics.reports_applied(msgs[applied:through])
            applied = through
        metrics.reports_applied(msgs[applied:])

    s = ctx.settings
    await pull_loop(
        ctx.js,
        "REPORTS",
        SCHEDULER_REPORTS_CONSUMER,
        handle,
        stopping,
        streams=s.streams,
        replicas=s.nats_stream_replicas,
    )
