"""Read models of groups, schedules and webhooks.

Called by `projections.project_all` for every appended event that is not a task row's
(the tasks' group, retry policy, schedule, batch and retry columns are kept with the
rest of the row, in `task_rows`), in the transaction that appended it; `rebuild`
empties these tables with the others. Events this module does not know pass untouched.
"""

from __future__ import annotations

import asyncpg

from fleet_contracts.events import (
    GroupCreated,
    GroupDeleted,
    GroupDevicesAdded,
    GroupDevicesRemoved,
    GroupRenamed,
    ScheduleDefined,
    ScheduleDeleted,
    ScheduleFired,
    WebhookDeleted,
    WebhookRegistered,
)
from fleet_scheduler.store import RecordedEvent

READ_MODEL_TABLES = ("groups", "group_devices", "schedules", "schedule_fires", "webhooks")
_OURS = ("group.", "schedule.", "webhook.")


async def project_many(conn: asyncpg.Connection, recs: list[RecordedEvent]) -> None:
    for rec in recs:
        if rec.type.startswith(_OURS):
            await project(conn, rec)


async def project(conn: asyncpg.Connection, rec: RecordedEvent) -> None:
    event = rec.event()
    match event:
        case GroupCreated():
            await conn.execute(
                "INSERT INTO groups (id, name, created_at) VALUES ($1, $2, $3)",
                event.group_id,
                event.name,
                rec.recorded_at,
            )
        case GroupRenamed():
            await conn.execute(
                "UPDATE groups SET name = $2 WHERE id = $1", event.group_id, event.name
            )
        case GroupDeleted():
            await conn.execute("DELETE FROM groups WHERE id = $1", event.group_id)
            await conn.execute("DELETE FROM group_devices WHERE group_id = $1", event.group_id)
        case GroupDevicesAdded():
            await conn.execute(
                "INSERT INTO group_devices (group_id, serial)"
                " SELECT $1, s FROM unnest($2::text[]) AS s ON CONFLICT DO NOTHING",
                event.group_id,
                event.serials,
            )
        case GroupDevicesRemoved():
            await conn.execute(
                "DELETE FROM group_devices WHERE group_id = $1 AND serial = ANY($2::text[])",
                event.group_id,
                event.serials,
            )
        case ScheduleDefined():
            await conn.execute(
                "INSERT INTO schedules (id, spec, enabled, created_at, defined_at)"
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (id) DO UPDATE SET spec = $2, enabled = $3, defined_at = $5",
                event.schedule_id,
                event.spec,
                bool(event.spec.get("enabled", True)),
                rec.recorded_at,
                event.defined_at,
            )
        case ScheduleDeleted():
            await conn.execute("DELETE FROM schedules WHERE id = $1", event.schedule_id)
        case ScheduleFired():
            await conn.execute(
                "INSERT INTO schedule_fires (schedule_id, fire_at, task_ids, skipped)"
                " VALUES ($1, $2, $3, $4)",
                event.schedule_id,
                event.fire_at,
                event.task_ids,
                event.skipped,
            )
            await conn.execute(
                "UPDATE schedules SET last_fire_at = GREATEST(last_fire_at, $2) WHERE id = $1",
                event.schedule_id,
                event.fire_at,
            )
        case WebhookRegistered():
            await conn.execute(
                "INSERT INTO webhooks (id, url, event_types, description, created_at,"
                " from_position) VALUES ($1, $2, $3, $4, $5, $6)",
                event.hook_id,
                event.url,
                event.event_types,
                event.description,
                rec.recorded_at,
                rec.position,
            )
        case WebhookDeleted():
            await conn.execute("DELETE FROM webhooks WHERE id = $1", event.hook_id)
