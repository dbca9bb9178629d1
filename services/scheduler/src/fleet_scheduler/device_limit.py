"""The plan's `device_limit`: how many phones one API key's work may occupy at a time.

What counts, per key (the command's actor): the distinct phones on which tasks that
key created are unfinished - pending (scheduled for later included), dispatched or
running - and not deleted. A create is refused with 40301 when the phones it names,
added to those, would exceed the limit; naming a phone already counted costs nothing.
Finished, failed and deleted tasks free their phone. Keyless local mode sends no limit
and is never refused. A retry of a failed task is not checked (it was counted when
created; a retry-all must not fail half-way).

`devices_in_use` is the one place the count is made, for creates and for device
sessions alike: a phone the key holds under a live lease counts too, and granting a
lease on a phone outside that set needs a free slot (409 when there is none).
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from fleet_contracts.codes import ErrorCode
from fleet_scheduler.errors import Rejected


async def devices_in_use(conn: asyncpg.Connection, actor: str) -> set[str]:
    """The phones `actor`'s unfinished tasks are on (index `tasks_open_by_creator`), and
    the phones it holds under a live device session (lease)."""
    rows = await conn.fetch(
        "SELECT serial FROM tasks WHERE created_by = $1 AND status IN (0, 1) AND NOT deleted"
        " UNION SELECT serial FROM leases WHERE actor = $1 AND task_id IS NULL"
        " AND expires_at > clock_timestamp()",
        actor,
    )
    return {r["serial"] for r in rows}


def check_device_limit(limit: int | None, in_use: set[str], wanted: Iterable[str]) -> None:
    """Refuse (40301) a create whose phones would take the key past `limit`."""
    if limit is None:
        return
    added = set(wanted) - in_use
    if len(in_use) + len(added) <= limit:
        return
    raise Rejected(
        ErrorCode.PLAN_NO_API_ACCESS,
        f"device_limit: this key's plan allows unfinished tasks on at most {limit} "
        f"devices at a time; it has them on {len(in_use)} and this create adds "
        f"{len(added)} more. Wait for tasks to finish, delete some, or upgrade the plan",
    )
