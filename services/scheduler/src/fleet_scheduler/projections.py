"""Read models (tasks, stats counters, devices, accounts) kept from the log.

`project_all` runs in the transaction that appended the events, so a read model never
disagrees with the log; `rebuild` replays the whole log into empty tables through the
same path. Task events are applied set-wise: the rows a batch touches are read once,
changed in Python by the rules of `task_rows`, and written back in a few statements,
so a batch of reports costs the same handful of statements whatever its size. A report
that arrives for a task that already ended (stopped, lost, retried) is in the log but
changes only the device: it frees it, it never brings the task back.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import asyncpg
import structlog

from fleet_contracts.events import (
    AccountRegistered,
    AccountRemoved,
    AccountsReported,
    DeviceConnected,
    DeviceDisconnected,
    MaterialAdded,
    MaterialDeleted,
    MaterialTagged,
    TaskCreated,
    TaskDispatched,
    TaskStarted,
)
from fleet_scheduler import account_lists, metrics, scheduling_read_models
from fleet_scheduler.account_lists import Account
from fleet_scheduler.session_projections import SESSION_EVENTS, SESSION_TABLES
from fleet_scheduler.session_projections import project as project_session
from fleet_scheduler.store import RecordedEvent, recorded_from_row
from fleet_scheduler.task import STATE_FIELDS, TaskState
from fleet_scheduler.task_rows import (
    CHANGED_COLUMNS,
    DEVICE_COLUMNS,
    DEVICE_EVENTS,
    ROW_EVENT_TYPES,
    TASK_COLUMNS,
    DeviceRow,
    Held,
    RowBatch,
    RowEvent,
    TaskRow,
)

log = structlog.get_logger(__name__)

READ_MODEL_TABLES = ("tasks", "devices", "accounts", "materials", *SESSION_TABLES)


TYPES = {
    "id": "bigint",
    "status": "smallint",
    "retry_count": "int",
    "interval_anchor": "bigint",
    "progress": "int",
    "deleted": "bool",
    "version": "int",
    "retry_checked": "bool",
    "auto_retries": "int",
    "script_config": "jsonb",
    "min_interval": "int",
    "max_interval": "int",
    "retry_policy": "jsonb",
    "schedule_id": "bigint",
    **dict.fromkeys(
        (
            "due_at",
            "dispatched_at",
            "lease_until",
            "started_at",
            "finished_at",
            "unheld_since",
            "created_at",
            "last_finished_at",
        ),
        "timestamptz",
    ),
    "busy": "bool",
    "current_task_id": "bigint",
    "last_task_id": "bigint",
}
"""Postgres types of the columns written from arrays; any other is text."""


def _unnest(columns: tuple[str, ...], first: int = 1) -> str:
    arrays = ", ".join(f"${i}::{TYPES.get(c, 'text')}[]" for i, c in enumerate(columns, first))
    return f"unnest({arrays}) AS x({', '.join(columns)})"


_TASK_SELECT = (
    f"SELECT {', '.join(CHANGED_COLUMNS)} FROM tasks"
    " WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"
)
_WHOLE_TASK_SELECT = (
    f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks"
    " WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"
)
_DEVICE_SELECT = (
    f"SELECT {', '.join(DEVICE_COLUMNS)} FROM devices"
    " WHERE serial = ANY($1::text[]) ORDER BY serial FOR UPDATE"
)
"""By serial alone: a phone holds only a task of its own serial (`RowBatch._hold` takes
the dispatch's serial, which is its task's), and the serials asked for are those of
every task of the run. Asking for the holders of the run's tasks too (`OR
current_task_id = ANY(...)`) found no other row, and the OR made the read a scan of
every phone compared with both lists: in a flood, 2.3 ms a read (0.9 ms by serial),
under the partitions' locks."""
_TASK_INSERT = (
    f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) SELECT * FROM {_unnest(TASK_COLUMNS)}"
)
_WRITTEN = tuple(c for c in CHANGED_COLUMNS if c != "serial")
_TASK_UPDATE = (
    f"UPDATE tasks t SET {', '.join(f'{c} = x.{c}' for c in _WRITTEN[1:])}"
    f" FROM {_unnest(_WRITTEN)} WHERE t.id = x.id"
)


def _device_update(first: int) -> str:
    return (
        f"UPDATE devices d SET {', '.join(f'{c} = x.{c}' for c in DEVICE_COLUMNS[1:])}"
        f" FROM {_unnest(DEVICE_COLUMNS, first)} WHERE d.serial = x.serial"
    )


_DEVICE_UPDATE = _device_update(1)
_TASK_AND_DEVICE_UPDATE = (
    f"WITH tasks_written AS ({_TASK_UPDATE}) {_device_update(len(_WRITTEN) + 1)}"
)
"""Both writes of a run that changed tasks and phones, in one statement (one round trip,
inside the transaction's locks): the two touch different tables."""


def _arrays(rows: list[Any], columns: tuple[str, ...]) -> list[list[Any]]:
    return [[getattr(r, c) for r in rows] for c in columns]


async def _project_rows(
    conn: asyncpg.Connection,
    run: list[tuple[RecordedEvent, RowEvent]],
    ready_at: dict[int, datetime | None] | None,
    held: Held,
) -> None:
    """Apply a run of task events: one read of the task rows they touch that `held`
    lacks and one of the device rows (locked), the events played on them in order, one
    write of each kind. `held` is left holding every task row of the run, as written.

    `ready_at` collects, for each task first seen here, when it became ready to start if
    it is dispatched: the rows as loaded are the state before this append."""
    created: set[int] = set()
    loaded: set[int] = set()
    serials: set[str] = set()
    # Creations alone (the command path) touch no phone: their devices are not read.
    wants_devices = ready_at is not None and any(isinstance(e, TaskStarted) for _, e in run)
    wants_devices = wants_devices or any(isinstance(e, DEVICE_EVENTS) for _, e in run)
    for _, event in run:
        task_id = event.task_id
        if isinstance(event, TaskCreated) and task_id not in loaded:
            created.add(task_id)
            serials.add(event.serial)
        elif task_id not in created:
            loaded.add(task_id)
        if isinstance(event, TaskDispatched):
            serials.add(event.serial)
    batch = RowBatch()
    if loaded:
        batch.tasks = {i: row for i in loaded if (row := held.rows.get(i)) is not None}
        unseen = sorted(loaded - batch.tasks.keys())
        if unseen:
            rows = [TaskRow(*r) for r in await conn.fetch(_TASK_SELECT, unseen)]
            held.keep(rows, partial=True)
            batch.tasks.update((row.id, row) for row in rows)
        serials.update(row.serial for row in batch.tasks.values())
    if wants_devices:
        rows = await conn.fetch(_DEVICE_SELECT, list(serials))
        batch.add_devices([DeviceRow(*r) for r in rows])
    if ready_at is not None:
        for row in batch.tasks.values():
            if row.id in ready_at:
                continue
            ready: datetime | None = None
            if row.state == "dispatched":
                device = batch.devices.get(row.serial)
                free = device.last_finished_at if device is not None else None
                ready = max(row.due_at, free) if free is not None else row.due_at
            ready_at[row.id] = ready
    for rec, event in run:
        batch.apply(rec, event)
    if batch.created:
        inserted = list(batch.created.values())
        await conn.execute(_TASK_INSERT, *_arrays(inserted, TASK_COLUMNS))
        held.keep(inserted, partial=False)
    changed = [batch.tasks[i] for i in sorted(batch.changed)]
    devices = [batch.devices[s] for s in sorted(batch.changed_devices)]
    if changed and devices:
        await conn.execute(
            _TASK_AND_DEVICE_UPDATE,
            *_arrays(changed, _WRITTEN),
            *_arrays(devices, DEVICE_COLUMNS),
        )
    elif changed:
        await conn.execute(_TASK_UPDATE, *_arrays(changed, _WRITTEN))
    elif devices:
        await conn.execute(_DEVICE_UPDATE, *_arrays(devices, DEVICE_COLUMNS))


ACCOUNT_LISTS = "device.accounts_reported"
"""Runs of these are projected together (`_project_account_lists`)."""
_ROWS = "task rows"
_ALONE = "alone"


def _run_kind(rec: RecordedEvent) -> str:
    """What projects `rec`: a run of task-row events, a run of account lists, or its own
    statements (`_ALONE`)."""
    if rec.type in ROW_EVENT_TYPES:
        return _ROWS
    return ACCOUNT_LISTS if rec.type == ACCOUNT_LISTS else _ALONE


async def project_all(
    conn: asyncpg.Connection,
    recs: list[RecordedEvent],
    latencies: list[float] | None = None,
    held: Held | None = None,
) -> None:
    """Project events in log order. Each run of task events is applied set-wise
    (`_project_rows`), each run of account lists too (`_project_account_lists`); any
    other event by its own statements, between the runs.

    With `latencies`, the dispatch latency of each task started here is added to it.
    `held`: the task rows the transaction holds already (`UnitOfWork.held`), not read
    again, and left holding those these events touched."""
    held = Held() if held is None else held
    ready_at: dict[int, datetime | None] | None = {} if latencies is not None else None
    started: dict[int, datetime] = {}
    for kind, group in itertools.groupby(recs, key=_run_kind):
        batch = list(group)
        if kind == _ROWS:
            started.update(
                (rec.data["task_id"], rec.recorded_at)
                for rec in batch
                if rec.type == "task.started"
            )
            run = [(rec, cast(RowEvent, rec.event())) for rec in batch]
            await _project_rows(conn, run, ready_at, held)
        elif kind == ACCOUNT_LISTS:
            lists = [cast(AccountsReported, rec.event()) for rec in batch]
            await _project_account_lists(conn, lists)
        else:
            for rec in batch:
                await _project_other(conn, rec)
                await scheduling_read_models.project_many(conn, [rec])
    if latencies is not None and ready_at is not None:
        for task_id, at in started.items():
            ready = ready_at.get(task_id)
            if ready is not None:
                latencies.append(metrics.dispatch_latency(ready, at))


async def _project_account_lists(conn: asyncpg.Connection, events: list[AccountsReported]) -> None:
    """A run of agents' account lists: the rows they can touch read (locked), folded in
    memory in order (`account_lists`), the difference written in two statements."""
    serials = sorted({e.serial for e in events})
    names = sorted({a["username"] for e in events for a in e.accounts if a.get("username")})
    rows = await conn.fetch(
        "SELECT username, platform, serial, source FROM accounts"
        " WHERE (serial = ANY($1::text[]) AND source = 'agent') OR username = ANY($2::text[])"
        " ORDER BY username FOR UPDATE",
        serials,
        names,
    )
    before = {r["username"]: Account(r["platform"], r["serial"], r["source"]) for r in rows}
    after = account_lists.apply_lists(before, [(e.serial, e.accounts) for e in events])
    gone, changed = account_lists.difference(before, after)
    if gone:
        await conn.execute(
            "DELETE FROM accounts WHERE username = ANY($1::text[]) AND source = 'agent'", gone
        )
    if changed:
        # The WHERE keeps an account registered through the API meanwhile as it is, as
        # each list's own upsert did.
        await conn.execute(
            "INSERT INTO accounts (username, platform, serial, source)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
            " ON CONFLICT (username) DO UPDATE SET platform = excluded.platform,"
            " serial = excluded.serial WHERE accounts.source = 'agent'",
            list(changed),
            [a.platform for a in changed.values()],
            [a.serial for a in changed.values()],
            [a.source for a in changed.values()],
        )


async def project(conn: asyncpg.Connection, rec: RecordedEvent) -> None:
    """Project one event, of any type."""
    await project_all(conn, [rec])


async def _project_other(conn: asyncpg.Connection, rec: RecordedEvent) -> None:
    """Project one event that is not a task row's (`ROW_EVENT_TYPES`)."""
    event = rec.event()
    match event:
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
    return TaskState(**{name: row[name] for name in STATE_FIELDS})


async def hold_tasks(conn: asyncpg.Connection, held: Held, ids: list[int]) -> list[TaskRow]:
    """The whole rows of `ids` that exist, locked, by id: those `held` lacks read in one
    statement, and held from then on (the projection then reads none of them again)."""
    found = held.whole(ids)
    unseen = sorted({i for i in ids if i not in found})
    if unseen:
        rows = [TaskRow(*r) for r in await conn.fetch(_WHOLE_TASK_SELECT, unseen)]
        held.keep(rows, partial=False)
        found.update((row.id, row) for row in rows)
    return [found[i] for i in sorted(found)]


async def hold_tasks_where(
    conn: asyncpg.Connection, held: Held, where: str, args: Sequence[object]
) -> list[TaskRow]:
    """The whole rows matching `where` ($1.. = args), locked, by id, held from then on.
    Read even when held: a held row is what the database has (every append writes its
    rows back), so reading it again is only a wasted read, never a wrong one."""
    rows = [
        TaskRow(*r)
        for r in await conn.fetch(
            f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE {where} ORDER BY id FOR UPDATE",
            *args,
        )
    ]
    held.keep(rows, partial=False)
    return rows


async def rebuild(conn: asyncpg.Connection, batch: int = 5000) -> int:
    """Empty the read models and replay the log into them; returns events replayed."""
    replayed = 0
    async with conn.transaction():
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        await conn.execute(f"TRUNCATE {', '.join(READ_MODEL_TABLES)}")
        await conn.execute(f"TRUNCATE {', '.join(scheduling_read_models.READ_MODEL_TABLES)}")
        # Emptying `tasks` empties its counters too (the TRUNCATE trigger of 090); the
        # replay's inserts and updates rebuild them.
        position = 0
        while True:
            # Of the metadata, the read models keep only the correlation id: decoding
            # the rest was a good part of a replay's time.
            rows = await conn.fetch(
                "SELECT position, stream_id, version, type, data,"
                " jsonb_build_object('correlation_id', metadata->'correlation_id') AS metadata,"
                " recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT $2",
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
