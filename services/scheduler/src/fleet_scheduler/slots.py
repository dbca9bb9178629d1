"""The plan's device slots: how many phones are held right now, by tasks and leases.

One place defines the count, so a lease (here) and a task create (`device_limit`
enforced at create) measure the same thing: a phone busy with a dispatched or running
task takes one slot, a live lease on a phone not also busy with a task takes one.
"""

from __future__ import annotations

import asyncpg

SLOTS_IN_USE = (
    "SELECT (SELECT count(*) FROM devices WHERE busy)"
    " + (SELECT count(*) FROM leases l WHERE l.task_id IS NULL"
    " AND l.expires_at > clock_timestamp()"
    " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.serial = l.serial AND d.busy))"
)


async def slots_in_use(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(SLOTS_IN_USE))
