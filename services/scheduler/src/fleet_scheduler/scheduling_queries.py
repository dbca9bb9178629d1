"""Answers about groups, schedules and webhooks, and the devices of a group.

Served like every query (queue group `schedulers`, one replica answers); a schedule's
next fire times are computed at answer time by `fires.next_fires`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import Reply
from fleet_contracts.queries import (
    GetSchedule,
    GetWebhook,
    ListDevices,
    ListGroups,
    ListSchedules,
    ListWebhooks,
    Query,
)
from fleet_contracts.rest import DevicePage, DeviceView
from fleet_contracts.schedules import ScheduleRequest, ScheduleView
from fleet_contracts.webhooks import DeliveryView, WebhookView
from fleet_scheduler.context import Context
from fleet_scheduler.fires import next_fires

RECENT_DELIVERIES = 20
SCHEDULE_COLUMNS = (
    "s.*, (SELECT f.skipped FROM schedule_fires f WHERE f.schedule_id = s.id"
    " ORDER BY f.fire_at DESC LIMIT 1) AS last_skipped"
)
NEXT_FIRES = 5


async def list_groups(ctx: Context, q: ListGroups) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT g.id, g.name, g.created_at,"
            " COALESCE(array_agg(d.serial ORDER BY d.serial)"
            " FILTER (WHERE d.serial IS NOT NULL), '{}') AS serials"
            " FROM groups g LEFT JOIN group_devices d ON d.group_id = g.id"
            " GROUP BY g.id ORDER BY g.name"
        )
    return Reply(data=[{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows])


async def list_group_devices(ctx: Context, q: ListDevices) -> Reply:
    """One group's phones, paged like the whole list."""
    offset = (q.page - 1) * q.page_size
    async with ctx.pool.acquire() as conn:
        group_id = await conn.fetchval("SELECT id FROM groups WHERE name = $1", q.group)
        if group_id is None:
            return Reply.failure(ErrorCode.INVALID_PARAMETERS, f"group: unknown group {q.group!r}")
        where = (
            " FROM devices d JOIN group_devices gd ON gd.serial = d.serial AND gd.group_id = $1"
            " WHERE ($2::boolean IS NULL OR d.online = $2)"
        )
        total = await conn.fetchval(f"SELECT count(*){where}", group_id, q.online)
        rows = await conn.fetch(
            "SELECT d.*, GREATEST(d.last_seen, a.last_seen) AS seen"
            f"{where.replace(' WHERE', ' LEFT JOIN agents a ON a.agent_id = d.agent_id WHERE')}"
            f" ORDER BY d.serial LIMIT {q.page_size} OFFSET {offset}",
            group_id,
            q.online,
        )
    page = DevicePage(
        devices=[DeviceView.model_validate({**dict(r), "last_seen": r["seen"]}) for r in rows],
        total=total,
        page=q.page,
        page_size=q.page_size,
    )
    return Reply(data=page.model_dump(mode="json"))


def schedule_view(row: asyncpg.Record, ctx: Context) -> dict[str, Any]:
    spec = ScheduleRequest.model_validate(row["spec"])
    after = max(filter(None, (ctx.clock(), row["last_fire_at"])))
    upcoming = next_fires(spec, after, NEXT_FIRES) if spec.enabled else []
    view = ScheduleView.model_validate(
        {
            **spec.model_dump(),
            "id": row["id"],
            "created_at": row["created_at"],
            "last_fire_at": row["last_fire_at"],
            "last_fire_skipped": row["last_skipped"],
            "next_fires": [f.astimezone(ZoneInfo(spec.timezone)) for f in upcoming],
        }
    )
    return view.model_dump(mode="json")


async def list_schedules(ctx: Context, q: ListSchedules) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT {SCHEDULE_COLUMNS} FROM schedules s ORDER BY id")
    return Reply(data=[schedule_view(r, ctx) for r in rows])


async def get_schedule(ctx: Context, q: GetSchedule) -> Reply:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules s WHERE id = $1", q.schedule_id
        )
    if row is None:
        return Reply.failure(ErrorCode.NOT_FOUND, f"schedule {q.schedule_id} not found")
    return Reply(data=schedule_view(row, ctx))


def _hook_view(row: asyncpg.Record, deliveries: list[asyncpg.Record]) -> dict[str, Any]:
    view = WebhookView(
        id=row["id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        description=row["description"],
        created_at=row["created_at"],
        deliveries=[DeliveryView.model_validate(dict(d)) for d in deliveries],
    )
    return view.model_dump(mode="json")


async def list_webhooks(ctx: Context, q: ListWebhooks) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM webhooks ORDER BY id")
    return Reply(data=[_hook_view(r, []) for r in rows])


async def get_webhook(ctx: Context, q: GetWebhook) -> Reply:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM webhooks WHERE id = $1", q.hook_id)
        if row is None:
            return Reply.failure(ErrorCode.NOT_FOUND, f"webhook {q.hook_id} not found")
        deliveries = await conn.fetch(
            "SELECT * FROM webhook_deliveries WHERE hook_id = $1 ORDER BY id DESC LIMIT $2",
            q.hook_id,
            RECENT_DELIVERIES,
        )
    return Reply(data=_hook_view(row, deliveries))


ANSWERS: dict[type[Query], Callable[[Context, Any], Awaitable[Reply]]] = {
    ListGroups: list_groups,
    ListSchedules: list_schedules,
    GetSchedule: get_schedule,
    ListWebhooks: list_webhooks,
    GetWebhook: get_webhook,
}
