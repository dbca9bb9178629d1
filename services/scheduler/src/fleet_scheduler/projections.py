"""Read models (tasks, stats counters, devices, accounts) kept from the log.

`project` runs in the transaction that appended the event, so a read model never
disagrees with the log; `rebuild` replays the whole log into empty tables. A report
that arrives for a task that already ended (stopped, lost, retried) is in the log but
changes only the device: it frees it, it never brings the task back.
"""

from __future__ import annotations

import asyncpg
import structlog

from fleet_contracts.codes import TaskStatus
from fleet_contracts.events import (
    AccountRegistered,
    AccountRemoved,
    AccountsReported,
    DeviceConnected,
    DeviceDisconnected,
    MaterialAdded,
    MaterialDeleted,
    MaterialTagged,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskDispatched,
    TaskFailed,
    TaskMaterialsPicked,
    TaskProgressed,
    TaskReportLate,
    TaskRequeued,
    TaskRetried,
    TaskScheduled,
    TaskStarted,
    TaskStopped,
)
from fleet_scheduler import late, scheduling_read_models
from fleet_scheduler.late import Verdict
from fleet_scheduler.session_projections import SESSION_EVENTS, SESSION_TABLES
from fleet_scheduler.session_projections import project as project_session
from fleet_scheduler.store import RecordedEvent, recorded_from_row
from fleet_scheduler.task import TaskState

log = structlog.get_logger(__name__)

READ_MODEL_TABLES = ("tasks", "devices", "accounts", "materials", *SESSION_TABLES)


async def _release(conn: asyncpg.Connection, task_id: int, finished: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE devices SET busy = false, current_task_id = NULL,"
        " last_task_id = $1, last_finished_at = $2 WHERE current_task_id = $1",
        task_id,
        finished.recorded_at,
    )


async def _end(
    conn: asyncpg.Connection,
    rec: RecordedEvent,
    task_id: int,
    dispatch_id: str,
    ended_by: str,
    reason: str | None,
) -> None:
    """A run ended. It ends the task when the task was on that run, or had been given up
    on as lost (or, for a completion, stopped): what the phone did wins (`late`)."""
    state = "completed" if ended_by == "completed" else "failed"
    status = int(TaskStatus.COMPLETED if state == "completed" else TaskStatus.FAILED)
    old = await conn.fetchrow(
        "SELECT status, deleted, state, dispatch_id, ended_by FROM tasks WHERE id = $1 FOR UPDATE",
        task_id,
    )
    reopenable = ("lost", "stopped") if state == "completed" else ("lost",)
    takes = (
        old is not None
        and old["dispatch_id"] == dispatch_id
        and (
            old["state"] in ("dispatched", "running")
            or (old["state"] == "failed" and old["ended_by"] in reopenable and not old["deleted"])
        )
    )
    if old is not None and takes:
        await conn.execute(
            "UPDATE tasks SET state = $2, status = $3, reason = $4, finished_at = $5,"
            " progress = CASE WHEN $2 = 'completed' THEN 100 ELSE progress END,"
            " version = $6, ended_by = $7 WHERE id = $1",
            task_id,
            state,
            status,
            reason,
            rec.recorded_at,
            rec.version,
            ended_by,
        )
    else:
        await conn.execute("UPDATE tasks SET version = $2 WHERE id = $1", task_id, rec.version)
    if ended_by != "lost":
        # A run given up on keeps its phone until the agent says the phone is free.
        await _release(conn, task_id, rec)


async def _late_report(conn: asyncpg.Connection, rec: RecordedEvent, event: TaskReportLate) -> None:
    """A run's report after its task moved on: the phone's state follows what the agent
    says (held again for a reopened run, free after an end); the task's own state is
    changed by the events that follow, if the rule says so."""
    if event.verdict == Verdict.REOPEN:
        await conn.execute(
            "UPDATE tasks SET ended_by = NULL, finished_at = NULL, reason = NULL,"
            " unheld_since = NULL, version = $2 WHERE id = $1",
            event.task_id,
            rec.version,
        )
        await conn.execute(
            "UPDATE devices d SET busy = true, current_task_id = t.id FROM tasks t"
            " WHERE t.id = $1 AND d.serial = t.serial",
            event.task_id,
        )
        return
    await conn.execute("UPDATE tasks SET version = $2 WHERE id = $1", event.task_id, rec.version)
    if event.report in (late.COMPLETED, late.FAILED, late.HEARTBEAT):
        # Not when the task is out on a newer run: that run holds the phone now.
        await conn.execute(
            "UPDATE devices SET busy = false, current_task_id = NULL,"
            " last_task_id = $1, last_finished_at = $2 WHERE current_task_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = $1"
            " AND state IN ('dispatched', 'running'))",
            event.task_id,
            rec.recorded_at,
        )


async def _set_status(conn: asyncpg.Connection, task_id: int, sql: str, *args: object) -> None:
    """Run an UPDATE of one task (params from $2); triggers keep the counters in step."""
    await conn.execute(f"UPDATE tasks SET {sql} WHERE id = $1", task_id, *args)


async def _insert_created(conn: asyncpg.Connection, recs: list[RecordedEvent]) -> None:
    """Insert the rows of many TaskCreated events in one statement."""
    events = [rec.event() for rec in recs]
    created = [e for e in events if isinstance(e, TaskCreated)]
    await conn.execute(
        "INSERT INTO tasks (id, serial, username, script_name, script_config, source,"
        " state, status, wait_reason, min_interval, max_interval, start_time,"
        " created_at, due_at, version, correlation_id, created_by,"
        " group_name, retry_policy, schedule_id, batch_id)"
        " SELECT id, serial, username, script_name, script_config, source, 'pending', 0,"
        " wait_reason, min_interval, max_interval, start_time, created_at, due_at, version,"
        " correlation_id, created_by, group_name, retry_policy, schedule_id, NULLIF(batch_id, '')"
        " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[],"
        " $6::text[], $7::text[], $8::int[], $9::int[], $10::text[], $11::timestamptz[],"
        " $12::timestamptz[], $13::int[], $14::text[], $15::text[], $16::text[], $17::jsonb[],"
        " $18::bigint[], $19::text[]) AS x(id, serial, username, script_name,"
        " script_config, source, wait_reason, min_interval, max_interval, start_time,"
        " created_at, due_at, version, correlation_id, created_by, group_name, retry_policy,"
        " schedule_id, batch_id)",
        [e.task_id for e in created],
        [e.serial for e in created],
        [e.username for e in created],
        [e.script_name for e in created],
        [e.script_config for e in created],
        [str(e.source) for e in created],
        [e.wait_reason for e in created],
        [e.min_interval for e in created],
        [e.max_interval for e in created],
        [e.start_time for e in created],
        [rec.recorded_at for rec in recs],
        [e.due_at for e in created],
        [rec.version for rec in recs],
        [rec.metadata.get("correlation_id") for rec in recs],
        [e.created_by for e in created],
        [e.group for e in created],
        [e.retry_policy for e in created],
        [e.schedule_id for e in created],
        [e.batch_id for e in created],
    )


async def _update_retried(conn: asyncpg.Connection, recs: list[RecordedEvent]) -> None:
    """Move many retried tasks back to pending in one statement (retry-all)."""
    # The recorded data, not parsed events: parsing is most of the time at retry-all scale.
    await conn.execute(
        "UPDATE tasks t SET state = 'pending', status = 0, reason = NULL, wait_reason = '',"
        " retry_count = r.retry_count, due_at = r.due_at::timestamptz, started_at = NULL,"
        " finished_at = NULL, progress = NULL, version = r.version, ended_by = NULL"
        " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[])"
        " AS r(id, retry_count, due_at, version) WHERE t.id = r.id",
        [rec.data["task_id"] for rec in recs],
        [rec.data["retry_count"] for rec in recs],
        [rec.data["due_at"] for rec in recs],
        [rec.version for rec in recs],
    )


BATCHED = {"task.created": _insert_created, "task.retried": _update_retried}
"""Event types whose runs are projected with one statement each."""


async def project_all(conn: asyncpg.Connection, recs: list[RecordedEvent]) -> None:
    """Project events in order; runs of TaskCreated (or TaskRetried) go in as one statement.

    A run never holds two events of one task, so one statement per run is the same as
    projecting them one by one."""
    run: list[RecordedEvent] = []
    streams: set[str] = set()
    for rec in recs:
        if run and (rec.type != run[0].type or rec.stream_id in streams):
            await BATCHED[run[0].type](conn, run)
            await scheduling_read_models.project_many(conn, run)
            run, streams = [], set()
        if rec.type in BATCHED:
            run.append(rec)
            streams.add(rec.stream_id)
            continue
        await project(conn, rec)
        await scheduling_read_models.project_many(conn, [rec])
    if run:
        await BATCHED[run[0].type](conn, run)
        await scheduling_read_models.project_many(conn, run)


async def project(conn: asyncpg.Connection, rec: RecordedEvent) -> None:
    event = rec.event()
    match event:
        case TaskCreated():
            await _insert_created(conn, [rec])
        case TaskScheduled():
            await conn.execute(
                "UPDATE tasks SET due_at = $2, wait_reason = $3, interval_anchor = $4,"
                " version = $5 WHERE id = $1",
                event.task_id,
                event.due_at,
                event.reason,
                event.after_task_id,
                rec.version,
            )
        case TaskDispatched():
            await conn.execute(
                "UPDATE tasks SET state = 'dispatched', agent_id = $2, dispatch_id = $3,"
                " dispatched_at = $4, lease_until = $5, version = $6, incarnation = $7,"
                " ended_by = NULL, unheld_since = NULL WHERE id = $1",
                event.task_id,
                event.agent_id,
                event.dispatch_id,
                rec.recorded_at,
                event.lease_until,
                rec.version,
                event.incarnation,
            )
            await conn.execute(
                "UPDATE devices SET busy = true, current_task_id = $2 WHERE serial = $1",
                event.serial,
                event.task_id,
            )
        case TaskStarted():
            await _set_status(
                conn,
                event.task_id,
                "state = 'running', status = 1, started_at = $2, progress = 0, version = $3,"
                " ended_by = NULL, unheld_since = NULL",
                rec.recorded_at,
                rec.version,
            )
        case TaskProgressed():
            await conn.execute(
                "UPDATE tasks SET progress = COALESCE($2, progress), version = $3 WHERE id = $1",
                event.task_id,
                event.percent,
                rec.version,
            )
        case TaskCompleted():
            await _end(conn, rec, event.task_id, event.dispatch_id, "completed", None)
        case TaskFailed():
            ended_by = "lost" if event.lost else "failed"
            await _end(conn, rec, event.task_id, event.dispatch_id, ended_by, event.reason)
        case TaskReportLate():
            await _late_report(conn, rec, event)
        case TaskStopped():
            # The device stays busy until the agent says the script has ended.
            await _set_status(
                conn,
                event.task_id,
                "state = 'failed', status = 3, reason = $2, finished_at = $3, version = $4,"
                " ended_by = 'stopped'",
                event.reason,
                rec.recorded_at,
                rec.version,
            )
        case TaskRequeued():
            await conn.execute(
                "UPDATE tasks SET state = 'pending', due_at = $2, wait_reason = $3,"
                " version = $4, ended_by = NULL WHERE id = $1",
                event.task_id,
                event.due_at,
                event.reason,
                rec.version,
            )
            await conn.execute(
                "UPDATE devices SET busy = false, current_task_id = NULL"
                " WHERE current_task_id = $1",
                event.task_id,
            )
        case TaskRetried():
            await _set_status(
                conn,
                event.task_id,
                "state = 'pending', status = 0, reason = NULL, wait_reason = '',"
                " retry_count = $2, due_at = $3, started_at = NULL, finished_at = NULL,"
                " progress = NULL, version = $4, ended_by = NULL",
                event.retry_count,
                event.due_at,
                rec.version,
            )
        case TaskDeleted():
            await conn.execute(
                "UPDATE tasks SET deleted = true, version = $2 WHERE id = $1 AND NOT deleted",
                event.task_id,
                rec.version,
            )
        case DeviceConnected():
            await conn.execute(
                "INSERT INTO devices (serial, agent_id, host, model, android_version, battery,"
                " online, last_seen) VALUES ($1, $2, $3, $4, $5, $6, true, $7)"
                " ON CONFLICT (serial) DO UPDATE SET agent_id = $2, host = $3,"
                " model = COALESCE($4, devices.model),"
                " android_version = COALESCE($5, devices.android_version),"
                " battery = COALESCE($6, devices.battery), online = true, last_seen = $7,"
                " offline_reason = NULL",
                event.serial,
                event.agent_id,
                event.host,
                event.model,
                event.android_version,
                event.battery,
                rec.recorded_at,
            )
        case DeviceDisconnected():
            await conn.execute(
                "UPDATE devices SET online = false, busy = false, current_task_id = NULL,"
                " offline_reason = $2 WHERE serial = $1",
                event.serial,
                event.reason,
            )
        case AccountsReported():
            names = [a["username"] for a in event.accounts if a.get("username")]
            await conn.execute(
                "DELETE FROM accounts WHERE serial = $1 AND source = 'agent'"
                " AND NOT (username = ANY($2::text[]))",
                event.serial,
                names,
            )
            for account in event.accounts:
                if not account.get("username"):
                    continue
                await conn.execute(
                    "INSERT INTO accounts (username, platform, serial, source)"
                    " VALUES ($1, $2, $3, 'agent') ON CONFLICT (username) DO UPDATE"
                    " SET platform = $2, serial = $3 WHERE accounts.source = 'agent'",
                    account["username"],
                    account.get("platform") or "tiktok",
                    event.serial,
                )
        case AccountRegistered():
            await conn.execute(
                "INSERT INTO accounts (username, platform, serial, source)"
                " VALUES ($1, $2, $3, 'api') ON CONFLICT (username) DO UPDATE"
                " SET platform = $2, serial = $3, source = 'api'",
                event.username,
                event.platform,
                event.serial,
            )
        case AccountRemoved():
            await conn.execute("DELETE FROM accounts WHERE username = $1", event.username)
        case _ if isinstance(event, SESSION_EVENTS):
            await project_session(conn, event, rec)
        case TaskMaterialsPicked():
            # The pick lives in the task's config already; only its version moves.
            await conn.execute(
                "UPDATE tasks SET version = $2 WHERE id = $1", event.task_id, rec.version
            )
        case MaterialAdded():
            await conn.execute(
                "INSERT INTO materials (id, sha256, name, size, kind, content_type, tags,"
                " created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                event.material_id,
                event.sha256,
                event.name,
                event.size,
                event.kind,
                event.content_type,
                event.tags,
                rec.recorded_at,
                rec.version,
            )
        case MaterialTagged():
            await conn.execute(
                "UPDATE materials SET tags = $2, updated_at = $3, version = $4 WHERE id = $1",
                event.material_id,
                event.tags,
                rec.recorded_at,
                rec.version,
            )
        case MaterialDeleted():
            await conn.execute(
                "UPDATE materials SET deleted = true, updated_at = $2, version = $3 WHERE id = $1",
                event.material_id,
                rec.recorded_at,
                rec.version,
            )


def task_state(row: asyncpg.Record) -> TaskState:
    return TaskState(
        id=row["id"],
        serial=row["serial"],
        state=row["state"],
        version=row["version"],
        script_name=row["script_name"],
        script_config=row["script_config"],
        username=row["username"],
        agent_id=row["agent_id"],
        dispatch_id=row["dispatch_id"],
        retry_count=row["retry_count"],
        deleted=row["deleted"],
        correlation_id=row["correlation_id"],
        ended_by=row["ended_by"],
    )


async def load_tasks(
    conn: asyncpg.Connection, ids: list[int], *, lock: bool = True
) -> dict[int, TaskState]:
    rows = await conn.fetch(
        "SELECT * FROM tasks WHERE id = ANY($1::bigint[]) ORDER BY id"
        + (" FOR UPDATE" if lock else ""),
        ids,
    )
    return {r["id"]: task_state(r) for r in rows}


async def rebuild(conn: asyncpg.Connection, batch: int = 2000) -> int:
    """Empty the read models and replay the log into them; returns events replayed."""
    replayed = 0
    async with conn.transaction():
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        await conn.execute(f"TRUNCATE {', '.join(READ_MODEL_TABLES)}")
        await conn.execute(f"TRUNCATE {', '.join(scheduling_read_models.READ_MODEL_TABLES)}")
        # TRUNCATE fires no row or statement trigger: the per-script counts start over
        # too, and the replay's inserts and updates rebuild them.
        await conn.execute("TRUNCATE task_script_stats")
        position = 0
        while True:
            rows = await conn.fetch(
                "SELECT position, stream_id, version, type, data, metadata, recorded_at"
                " FROM events WHERE position > $1 ORDER BY position LIMIT $2",
                position,
                batch,
            )
            if not rows:
                break
            await project_all(conn, [recorded_from_row(r) for r in rows])
            position = rows[-1]["position"]
            replayed += len(rows)
    log.info("read_models.rebuilt", events=replayed)
    return replayed
