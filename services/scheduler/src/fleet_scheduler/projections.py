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
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskDispatched,
    TaskFailed,
    TaskProgressed,
    TaskRequeued,
    TaskRetried,
    TaskScheduled,
    TaskStarted,
    TaskStopped,
)

from fleet_scheduler.store import RecordedEvent, recorded_from_row
from fleet_scheduler.task import TaskState

log = structlog.get_logger(__name__)

READ_MODEL_TABLES = ("tasks", "devices", "accounts")


async def _move(conn: asyncpg.Connection, old: int | None, new: int | None) -> None:
    if old == new:
        return
    if old is not None:
        await conn.execute("UPDATE task_stats SET count = count - 1 WHERE status = $1", old)
    if new is not None:
        await conn.execute("UPDATE task_stats SET count = count + 1 WHERE status = $1", new)


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
    state: str,
    reason: str | None,
) -> None:
    status = TaskStatus.COMPLETED if state == "completed" else TaskStatus.FAILED
    row = await conn.fetchrow(
        "UPDATE tasks t SET state = $2, status = $3, reason = $4, finished_at = $5,"
        " progress = CASE WHEN $2 = 'completed' THEN 100 ELSE t.progress END,"
        " version = $6"
        " FROM (SELECT id, status AS old FROM tasks WHERE id = $1 FOR UPDATE) o"
        " WHERE t.id = o.id AND t.state IN ('dispatched', 'running')"
        " AND t.dispatch_id = $7 RETURNING o.old, t.deleted",
        task_id,
        state,
        int(status),
        reason,
        rec.recorded_at,
        rec.version,
        dispatch_id,
    )
    if row is None:
        await conn.execute("UPDATE tasks SET version = $2 WHERE id = $1", task_id, rec.version)
    elif not row["deleted"]:
        await _move(conn, row["old"], int(status))
    await _release(conn, task_id, rec)


async def _set_status(
    conn: asyncpg.Connection, task_id: int, sql: str, *args: object
) -> None:
    """Run an UPDATE of one task (params from $2) and keep the counters in step."""
    row = await conn.fetchrow(
        "WITH o AS (SELECT status AS old, deleted FROM tasks WHERE id = $1 FOR UPDATE)"
        f" UPDATE tasks SET {sql} WHERE id = $1 RETURNING (SELECT old FROM o),"
        " (SELECT deleted FROM o), status",
        task_id,
        *args,
    )
    if row is not None and not row["deleted"]:
        await _move(conn, row["old"], row["status"])


async def project(conn: asyncpg.Connection, rec: RecordedEvent) -> None:  # noqa: C901
    event = rec.event()
    match event:
        case TaskCreated():
            await conn.execute(
                "INSERT INTO tasks (id, serial, username, script_name, script_config, source,"
                " state, status, wait_reason, min_interval, max_interval, start_time,"
                " created_at, due_at, version)"
                " VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $9, $10, $11, $12, $13)",
                event.task_id,
                event.serial,
                event.username,
                event.script_name,
                event.script_config,
                str(event.source),
                event.wait_reason,
                event.min_interval,
                event.max_interval,
                event.start_time,
                rec.recorded_at,
                event.due_at,
                rec.version,
            )
            await _move(conn, None, int(TaskStatus.PENDING))
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
                " dispatched_at = $4, lease_until = $5, version = $6 WHERE id = $1",
                event.task_id,
                event.agent_id,
                event.dispatch_id,
                rec.recorded_at,
                event.lease_until,
                rec.version,
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
                "state = 'running', status = 1, started_at = $2, progress = 0, version = $3",
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
            await _end(conn, rec, event.task_id, event.dispatch_id, "failed", event.reason)
        case TaskStopped():
            # The device stays busy until the agent says the script has ended.
            await _set_status(
                conn,
                event.task_id,
                "state = 'failed', status = 3, reason = $2, finished_at = $3, version = $4",
                event.reason,
                rec.recorded_at,
                rec.version,
            )
        case TaskRequeued():
            await conn.execute(
                "UPDATE tasks SET state = 'pending', due_at = $2, wait_reason = $3,"
                " version = $4 WHERE id = $1",
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
                " progress = NULL, version = $4",
                event.retry_count,
                event.due_at,
                rec.version,
            )
        case TaskDeleted():
            row = await conn.fetchrow(
                "UPDATE tasks SET deleted = true, version = $2 WHERE id = $1 AND NOT deleted"
                " RETURNING status",
                event.task_id,
                rec.version,
            )
            if row is not None:
                await _move(conn, row["status"], None)
        case DeviceConnected():
            await conn.execute(
                "INSERT INTO devices (serial, agent_id, host, model, android_version, battery,"
                " online, last_seen) VALUES ($1, $2, $3, $4, $5, $6, true, $7)"
                " ON CONFLICT (serial) DO UPDATE SET agent_id = $2, host = $3,"
                " model = COALESCE($4, devices.model),"
                " android_version = COALESCE($5, devices.android_version),"
                " battery = COALESCE($6, devices.battery), online = true, last_seen = $7",
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
                "UPDATE devices SET online = false, busy = false, current_task_id = NULL"
                " WHERE serial = $1",
                event.serial,
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
        await conn.execute("TRUNCATE tasks, devices, accounts")
        await conn.execute("UPDATE task_stats SET count = 0")
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
            for row in rows:
                await project(conn, recorded_from_row(row))
            position = rows[-1]["position"]
            replayed += len(rows)
        # Liveness is not in the log: devices come back as their agents last left them.
        await conn.execute(
            "UPDATE devices d SET last_seen = a.last_seen FROM agents a"
            " WHERE a.agent_id = d.agent_id"
        )
    log.info("read_models.rebuilt", events=replayed)
    return replayed
