"""The command side: each command from COMMANDS handled once, its result sent after commit.

A command's result is recorded under its message id in the transaction that appends
its events; a redelivered or republished id finds that record and gets the same answer
without anything being applied again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from pydantic import ValidationError

from fleet_contracts.agent import StopRun
from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import (
    AddMaterial,
    AnyCommand,
    BatchDeleteTasks,
    CommandResult,
    CreateTasks,
    DeleteMaterial,
    DeleteTask,
    LeaseDevice,
    RegisterAccount,
    RegisterCustomScript,
    ReleaseLease,
    RemoveAccount,
    RemoveCustomScript,
    RenewLease,
    RetryAllTasks,
    RetryTask,
    SetHostAdb,
    StopTask,
    TagMaterial,
    parse_command,
    request_digest,
)
from fleet_contracts.events import TaskCreated
from fleet_contracts.scripts import BUILTIN_CONFIGS
from fleet_contracts.subjects import (
    HDR_MSG_ID,
    HDR_REPLY_TO,
    KV_SCRIPTS,
    SCHEDULER_COMMANDS_CONSUMER,
    agent_stop_subject,
)
from fleet_contracts.validation import describe
from fleet_runtime.failpoints import failpoint
from fleet_runtime.logs import bind_correlation
from fleet_scheduler import (
    bulk,
    command_results,
    dispatch,
    handlers,
    library,
    library_reads,
    metrics,
    scheduling_commands,
    session_commands,
)
from fleet_scheduler.consumer import pull_loop
from fleet_scheduler.context import Context
from fleet_scheduler.creates import decide_creates
from fleet_scheduler.errors import Rejected, database_unavailable, failure_code
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.store import ConcurrencyError, Metadata, NewEvent
from fleet_scheduler.task import StopOnAgent
from fleet_scheduler.uow import UnitOfWork, unit_of_work

log = structlog.get_logger(__name__)


async def plugin_schemas(ctx: Context, name: str) -> dict[str, dict[str, Any]]:
    """The JSON Schema of plugin script `name` from the `scripts` bucket, if announced."""
    if name in BUILTIN_CONFIGS:
        return {}
    try:
        kv = await ctx.js.key_value(KV_SCRIPTS)
        entry = await kv.get(name)
    except (BucketNotFoundError, KeyNotFoundError):
        return await session_commands.custom_schema(ctx.pool, name)
    if not entry.value:
        return {}
    spec = json.loads(entry.value)
    return {name: spec.get("config_schema", {})}


async def _decide(
    uow: UnitOfWork, ctx: Context, cmd: AnyCommand, plugins: dict[str, Any]
) -> Outcome:
    conn = uow.conn
    now = ctx.clock()
    match cmd:
        case CreateTasks():
            [verdict] = await decide_creates(conn, ctx, [cmd], [plugins])
            if isinstance(verdict, Rejected):
                raise verdict
            return verdict
        case StopTask():
            states = await uow.load_tasks([cmd.task_id])
            return handlers.stop_task(cmd.task_id, states.get(cmd.task_id))
        case DeleteTask():
            states = await uow.load_tasks([cmd.task_id])
            return handlers.delete_task(cmd.task_id, states.get(cmd.task_id))
        case BatchDeleteTasks():
            return handlers.batch_delete(cmd, await uow.load_tasks(cmd.task_ids))
        case RetryTask():
            states = await uow.load_tasks([cmd.task_id])
            return handlers.retry_task(cmd.task_id, states.get(cmd.task_id), now)
        case RegisterAccount():
            known = await conn.fetchval(
                "SELECT count(*) FROM devices WHERE serial = $1", cmd.account.serial
            )
            return handlers.register_account(cmd, {cmd.account.serial} if known else set())
        case RemoveAccount():
            exists = await conn.fetchval(
                "SELECT count(*) FROM accounts WHERE username = $1", cmd.username
            )
            return handlers.remove_account(cmd, bool(exists))
        case (
            LeaseDevice()
            | RenewLease()
            | ReleaseLease()
            | RegisterCustomScript()
            | RemoveCustomScript()
            | SetHostAdb()
        ):
            return await session_commands.decide(conn, cmd)
        case AddMaterial():
            # Two schedulers adding the same bytes at once: the second waits for the
            # first to commit, then finds its item (one live item per sha256).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", cmd.sha256)
            existing = await library_reads.load_live_by_sha(conn, cmd.sha256)
            new_id = 0 if existing else await conn.fetchval("SELECT nextval('material_ids')")
            return library.add_material(cmd, existing, new_id, now)
        case TagMaterial():
            item = await library_reads.load_item(conn, cmd.material_id)
            return library.tag_material(cmd, item, now)
        case DeleteMaterial():
            item = await library_reads.load_item(conn, cmd.material_id)
            return library.delete_material(cmd, item)
        case _ if scheduling_commands.handles(cmd):
            return await scheduling_commands.decide(conn, ctx, cmd)
    raise Rejected(ErrorCode.INVALID_PARAMETERS, f"type: unknown command {cmd.type!r}")


async def decide(
    uow: UnitOfWork, ctx: Context, cmd: AnyCommand, plugins: dict[str, Any]
) -> Outcome:
    """Decide one command without recording its result (a schedule's fire creates
    its tasks through here, as a REST create would)."""
    return await _decide(uow, ctx, cmd, plugins)


def metadata_for(cmd: AnyCommand) -> Metadata:
    return Metadata(correlation_id=cmd.correlation_id, causation_id=cmd.message_id, actor=cmd.actor)


async def _apply(
    uow: UnitOfWork, ctx: Context, cmd: AnyCommand, plugins: dict[str, Any]
) -> tuple[CommandResult, list[StopOnAgent]]:
    """Decide and append one command; its result is for the caller to record."""
    if isinstance(cmd, RetryAllTasks):
        data = await bulk.retry_all(uow, metadata_for(cmd), ctx.clock())
        uow.forget_tasks()
        return CommandResult(data=data, command_id=cmd.message_id), []
    try:
        outcome = await _decide(uow, ctx, cmd, plugins)
        await uow.append(outcome.events, metadata_for(cmd))
    except Rejected as exc:
        return _result(cmd, exc), []
    return _result(cmd, outcome), outcome.effects


def _result(cmd: AnyCommand, verdict: Outcome | Rejected) -> CommandResult:
    if isinstance(verdict, Rejected):
        return CommandResult(
            code=int(verdict.code),
            message=verdict.message,
            command_id=cmd.message_id,
            request_digest=request_digest(cmd),
        )
    return CommandResult(
        data=verdict.data, command_id=cmd.message_id, request_digest=request_digest(cmd)
    )


async def _apply_creates(
    uow: UnitOfWork, ctx: Context, cmds: list[CreateTasks], plugins: list[dict[str, Any]]
) -> list[CommandResult]:
    """Decide a run of creates together and append all their events in one append, each
    event under its own command's ids."""
    verdicts = await decide_creates(uow.conn, ctx, cmds, plugins)
    events: list[NewEvent] = []
    for cmd, verdict in zip(cmds, verdicts, strict=True):
        if not isinstance(verdict, Rejected):
            meta = metadata_for(cmd)
            events += [replace(e, metadata=e.metadata or meta) for e in verdict.events]
    await uow.append(events)
    return [_result(cmd, v) for cmd, v in zip(cmds, verdicts, strict=True)]


async def _apply_once(
    uow: UnitOfWork, ctx: Context, cmds: list[AnyCommand], plugins: list[dict[str, Any]]
) -> list[tuple[CommandResult, list[StopOnAgent]]]:
    """Apply the commands not handled before and record their results.

    Consecutive creates are applied as one run (`_apply_creates`); any other command
    is applied alone, after the creates before it, so it sees their tasks.
    """
    seen = await command_results.recorded_among(uow.conn, [cmd.message_id for cmd in cmds])
    fresh: dict[str, tuple[CommandResult, list[StopOnAgent]]] = {}
    run: dict[str, tuple[CreateTasks, dict[str, Any]]] = {}

    async def flush() -> None:
        if run:
            creates = list(run.values())
            results = await _apply_creates(
                uow, ctx, [c for c, _ in creates], [p for _, p in creates]
            )
            fresh.update((r.command_id, (r, [])) for r in results)
            run.clear()

    for cmd, schemas in zip(cmds, plugins, strict=True):
        if cmd.message_id in seen or cmd.message_id in fresh or cmd.message_id in run:
            continue  # handled before, or earlier in this batch: the same result
        if isinstance(cmd, CreateTasks):
            run[cmd.message_id] = (cmd, schemas)
            continue
        await flush()
        fresh[cmd.message_id] = await _apply(uow, ctx, cmd, schemas)
    await flush()
    if fresh:
        await command_results.record(uow.conn, [r for r, _ in fresh.values()])
    out: list[tuple[CommandResult, list[StopOnAgent]]] = []
    for cmd in cmds:
        if cmd.message_id in seen:
            out.append((seen[cmd.message_id], []))
        else:
            out.append(fresh[cmd.message_id])
    return out


async def _plugins(ctx: Context, cmd: AnyCommand) -> dict[str, Any]:
    return (
        await plugin_schemas(ctx, cmd.request.script_name) if isinstance(cmd, CreateTasks) else {}
    )


async def handle_commands(
    ctx: Context, cmds: list[AnyCommand]
) -> list[tuple[CommandResult, list[StopOnAgent]]]:
    """Apply each command once, all in one transaction; results in the same order.

    One transaction for a whole fetched batch saves a commit and the events lock per
    command; should the batch conflict, each command is retried alone.
    """
    plugins = [await _plugins(ctx, cmd) for cmd in cmds]
    try:
        async with unit_of_work(ctx.pool, on_commit=ctx.appended, late=_late(cmds)) as uow:
            outcomes = await _apply_once(uow, ctx, cmds, plugins)
            claims = await _claim_created(uow, ctx)
    except ConcurrencyError as exc:
        log.info("command.batch_conflict", size=len(cmds), error=str(exc))
    except Exception as exc:
        if database_unavailable(exc):
            raise
        # One bad command must not hold back the others in its batch: find it alone.
        log.warning("command.batch_failed", size=len(cmds), error=repr(exc))
    else:
        if claims:
            failpoint("dispatch.after_claim")
        dispatch.send(ctx, claims)
        return outcomes
    return [await handle_command(ctx, cmd) for cmd in cmds]


def _late(cmds: list[AnyCommand]) -> bool:
    """Whether a batch may take the partitions' locks at its append (`unit_of_work`'s
    `late`): creates only read before it (devices, accounts, scripts, the library) and
    draw ids, so the reports' transactions (and another scheduler's commands) need not
    wait while they decide. Not with a device limit, which is counted across every partition
    and must not pass two creates of one key on the same count, nor with any other
    command, which may lock or write rows before it appends."""
    return all(isinstance(cmd, CreateTasks) and cmd.device_limit is None for cmd in cmds)


async def _claim_created(uow: UnitOfWork, ctx: Context) -> list[dispatch.Claim]:
    """The runs for the tasks just created on idle phones, dispatched in the creates'
    transaction (`dispatch.claim_in_savepoint`)."""
    serials = {e.serial for rec in uow.appended if isinstance(e := rec.event(), TaskCreated)}
    return await dispatch.claim_in_savepoint(uow, ctx, serials, "create")


async def handle_command(ctx: Context, cmd: AnyCommand) -> tuple[CommandResult, list[StopOnAgent]]:
    """Apply `cmd` once; return its result and what to tell agents after commit."""
    plugins = await _plugins(ctx, cmd)
    for attempt in range(5):
        try:
            async with unit_of_work(ctx.pool, metadata_for(cmd), ctx.appended) as uow:
                [outcome] = await _apply_once(uow, ctx, [cmd], [plugins])
            return outcome
        except ConcurrencyError as exc:
            log.info("command.conflict", attempt=attempt, error=str(exc))
        except Exception as exc:
            if database_unavailable(exc):
                raise
            return await record_failure(ctx, cmd, exc), []
    raise RuntimeError(f"command {cmd.message_id} kept conflicting")


async def record_failure(ctx: Context, cmd: AnyCommand, exc: Exception) -> CommandResult:
    """Answer a command that cannot be applied, and remember the answer: otherwise it
    would be redelivered, fail again, and its caller would only ever see a timeout."""
    code = failure_code(exc)
    with bind_correlation(cmd.correlation_id, command_id=cmd.message_id, command=cmd.type):
        log.error("command.failed", code=int(code), exc_info=exc)
    detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    message = (
        f"{cmd.type}: the command's values cannot be stored ({detail})"
        if code is ErrorCode.INVALID_PARAMETERS
        else f"{cmd.type} failed inside the scheduler (command id {cmd.message_id})"
    )
    result = CommandResult(
        code=int(code),
        message=message,
        command_id=cmd.message_id,
        request_digest=request_digest(cmd),
    )
    async with ctx.pool.acquire() as conn:
        return await command_results.record_failure(conn, result)


async def send_stops(ctx: Context, effects: list[StopOnAgent]) -> None:
    for effect in effects:
        stop = StopRun(task_id=effect.task_id, dispatch_id=effect.dispatch_id)
        try:
            await ctx.nc.request(agent_stop_subject(effect.agent_id), stop.to_bytes(), timeout=3)
        except Exception as exc:
            # The task is already failed; the device frees when the agent reports the
            # script's end or when the agent is declared lost.
            log.warning("stop.not_delivered", task_id=effect.task_id, error=str(exc))


async def on_messages(ctx: Context, msgs: list[Msg]) -> None:
    started = metrics.now()
    readable: list[tuple[AnyCommand, str | None]] = []
    for msg in msgs:
        headers = msg.headers or {}
        reply_to = headers.get(HDR_REPLY_TO)
        try:
            readable.append((parse_command(msg.data), reply_to))
        except ValidationError as exc:
            result = CommandResult(
                code=int(ErrorCode.INVALID_PARAMETERS),
                message=describe(exc),
                command_id=headers.get(HDR_MSG_ID, ""),
            )
            log.warning("command.unreadable", error=result.message)
            if reply_to:
                await ctx.nc.publish(reply_to, result.model_dump_json().encode())
    if not readable:
        return
    outcomes = await handle_commands(ctx, [cmd for cmd, _ in readable])
    for (cmd, reply_to), (result, effects) in zip(readable, outcomes, strict=True):
        with bind_correlation(cmd.correlation_id, command_id=cmd.message_id, command=cmd.type):
            log.info("command.handled", code=result.code)
        metrics.command_handled(cmd.type, result.code, started)
        if reply_to:
            await ctx.nc.publish(reply_to, result.model_dump_json().encode())
        if effects:
            ctx.spawn(send_stops(ctx, effects))


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    async def handle(msgs: list[Msg]) -> None:
        ctx.commands_in_hand += 1
        try:
            await on_messages(ctx, msgs)
        finally:
            ctx.commands_in_hand -= 1

    s = ctx.settings
    await pull_loop(
        ctx.js,
        "COMMANDS",
        SCHEDULER_COMMANDS_CONSUMER,
        handle,
        stopping,
        streams=s.streams,
        replicas=s.nats_stream_replicas,
    )
