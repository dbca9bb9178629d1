"""Recurring schedules: their commands, and the loop that fires them.

Each fire is recorded once as a ScheduleFired event whose identity is (schedule id,
fire time): the loop decides under the events lock with the schedule row locked, reads
the last recorded fire there, and the `schedule_fires` primary key refuses a second
record should anything else slip, so two schedulers, or one restarted mid-fire, never
create a fire's tasks twice. The tasks come from the same decision a REST create takes
(targets resolved then: a group's members at the fire), with the fire as batch id.
When fires count as missed and which one is taken: see `fires.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from pydantic import ValidationError

from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.commands import (
    CreateTasks,
    DefineSchedule,
    DeleteSchedule,
    SetScheduleEnabled,
)
from fleet_contracts.events import ScheduleDefined, ScheduleDeleted, ScheduleFired, TaskCreated
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.schedules import ScheduleRequest
from fleet_contracts.validation import describe
from fleet_scheduler import commands, groups
from fleet_scheduler.context import Context
from fleet_scheduler.errors import Rejected
from fleet_scheduler.fires import FirePlan, plan_fire
from fleet_scheduler.handlers import Outcome, check_script
from fleet_scheduler.store import Metadata, NewEvent
from fleet_scheduler.uow import UnitOfWork, unit_of_work

log = structlog.get_logger(__name__)


def schedule_stream_id(schedule_id: int) -> str:
    return f"schedule-{schedule_id}"


def fire_id(schedule_id: int, fire_at: datetime) -> str:
    return f"schedule-{schedule_id}-fire-{fire_at.isoformat()}"


# Commands
def _defined(schedule_id: int, spec: ScheduleRequest, now: datetime) -> Outcome:
    event = ScheduleDefined(
        schedule_id=schedule_id, spec=spec.model_dump(mode="json"), defined_at=now
    )
    return Outcome(
        events=[NewEvent(schedule_stream_id(schedule_id), event)],
        data={"id": schedule_id, **spec.model_dump(mode="json")},
    )


async def _stored(conn: asyncpg.Connection, schedule_id: int) -> ScheduleRequest:
    row = await conn.fetchrow("SELECT spec FROM schedules WHERE id = $1 FOR UPDATE", schedule_id)
    if row is None:
        raise Rejected(ErrorCode.NOT_FOUND, f"schedule {schedule_id} not found")
    return ScheduleRequest.model_validate(row["spec"])


async def _check(conn: asyncpg.Connection, ctx: Context, spec: ScheduleRequest) -> None:
    """What can be checked at definition: the script and its config, a group's existence."""
    probe = CreateTasks(request=_request(spec, serials=["-"]))
    check_script(probe, await commands.plugin_schemas(ctx, spec.script_name))
    if spec.group is not None and await groups.load_group(conn, name=spec.group) is None:
        raise Rejected(ErrorCode.INVALID_PARAMETERS, f"group: unknown group {spec.group!r}")


async def decide(
    conn: asyncpg.Connection,
    ctx: Context,
    cmd: DefineSchedule | SetScheduleEnabled | DeleteSchedule,
) -> Outcome:
    now = ctx.clock()
    match cmd:
        case DefineSchedule():
            await _check(conn, ctx, cmd.schedule)
            if cmd.schedule_id is None:
                schedule_id = await conn.fetchval("SELECT nextval('schedule_ids')")
            else:
                await _stored(conn, cmd.schedule_id)
                schedule_id = cmd.schedule_id
            return _defined(schedule_id, cmd.schedule, now)
        case SetScheduleEnabled():
            spec = await _stored(conn, cmd.schedule_id)
            return _defined(cmd.schedule_id, spec.model_copy(update={"enabled": cmd.enabled}), now)
        case DeleteSchedule():
            await _stored(conn, cmd.schedule_id)
            event = ScheduleDeleted(schedule_id=cmd.schedule_id)
            return Outcome(
                events=[NewEvent(schedule_stream_id(cmd.schedule_id), event)],
                data={"id": cmd.schedule_id},
            )


# Fires
def _request(spec: ScheduleRequest, **target: Any) -> CreateTaskRequest:
    body: dict[str, Any] = {
        "script_name": spec.script_name,
        "script_config": spec.script_config,
        "enable_multi_account": spec.enable_multi_account and "usernames" not in target,
        "retry": spec.retry,
    }
    if not target:
        target = {
            k: getattr(spec, k) for k in ("group", "serials", "usernames") if getattr(spec, k)
        }
    return CreateTaskRequest.model_validate({**body, **target})


async def _fire(
    uow: UnitOfWork, ctx: Context, schedule_id: int, spec: ScheduleRequest, plan: FirePlan
) -> ScheduleFired:
    fired = ScheduleFired(schedule_id=schedule_id, fire_at=plan.fire_at, missed=plan.missed)
    if not plan.take:
        late = ctx.clock() - plan.fire_at
        return fired.model_copy(update={"skipped": f"missed: {late} late, over the grace"})
    if spec.overlap == "skip" and await uow.conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE schedule_id = $1 AND NOT deleted"
        " AND state IN ('pending', 'dispatched', 'running'))",
        schedule_id,
    ):
        return fired.model_copy(update={"skipped": "overlap: the previous fire has not finished"})
    identity = fire_id(schedule_id, plan.fire_at)
    try:
        cmd = CreateTasks(
            message_id=identity,
            correlation_id=identity,
            request=_request(spec),
            source=TaskSource.API,
            actor=f"schedule {schedule_id}",
        )
        plugins = await commands.plugin_schemas(ctx, spec.script_name)
        outcome = await commands.decide(uow, ctx, cmd, plugins)
    except Rejected as exc:
        return fired.model_copy(update={"skipped": exc.message})
    except ValidationError as exc:
        return fired.model_copy(update={"skipped": describe(exc)})
    events = [
        dataclasses.replace(e, event=e.event.model_copy(update={"schedule_id": schedule_id}))
        if isinstance(e.event, TaskCreated)
        else e
        for e in outcome.events
    ]
    await uow.append(events, Metadata(correlation_id=identity, causation_id=identity))
    return fired.model_copy(update={"task_ids": outcome.data["task_ids"]})


_DUE = "SELECT id, spec, defined_at, last_fire_at FROM schedules WHERE enabled"


def _plan(row: asyncpg.Record, now: datetime, grace: timedelta) -> FirePlan | None:
    spec = ScheduleRequest.model_validate(row["spec"])
    since = max(filter(None, (row["defined_at"], row["last_fire_at"])))
    return plan_fire(spec, since, now, grace)


async def fire_due(ctx: Context) -> list[ScheduleFired]:
    """Record every fire that is due now; returns what was recorded."""
    now = ctx.clock()
    grace = timedelta(seconds=ctx.settings.scheduler_schedule_grace_seconds)
    async with ctx.pool.acquire() as conn:
        # Looked at without the events lock first: most ticks have nothing to fire.
        due = [r["id"] for r in await conn.fetch(_DUE) if _plan(r, now, grace) is not None]
    if not due:
        return []
    recorded: list[ScheduleFired] = []
    async with unit_of_work(ctx.pool, on_commit=ctx.appended) as uow:
        rows = await uow.conn.fetch(
            _DUE + " AND id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", due
        )
        for row in rows:
            plan = _plan(row, now, grace)
            if plan is None:  # another scheduler recorded it while we waited for the lock
                continue
            spec = ScheduleRequest.model_validate(row["spec"])
            fired = await _fire(uow, ctx, row["id"], spec, plan)
            meta = Metadata(correlation_id=fire_id(row["id"], plan.fire_at))
            await uow.append([NewEvent(schedule_stream_id(row["id"]), fired)], meta)
            recorded.append(fired)
            log.info(
                "schedule.fired",
                schedule_id=row["id"],
                fire_at=plan.fire_at.isoformat(),
                tasks=len(fired.task_ids),
                skipped=fired.skipped or None,
                missed=fired.missed,
            )
    return recorded


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    period = ctx.settings.scheduler_schedule_poll_seconds
    while not stopping.is_set():
        try:
            await fire_due(ctx)
        except Exception as exc:
            log.warning("schedules.step_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
