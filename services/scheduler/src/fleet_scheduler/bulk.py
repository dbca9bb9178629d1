"""Set-wise commands: retry-all over any number of failed tasks, as two SQL statements.

The decision is the same for every task (failed and not deleted -> pending, due now,
one more retry), so it is made in the database: at a hundred thousand tasks, an
aggregate, an event object and a JSON round trip per task took longer than a caller
waits. The events written are exactly the `TaskRetried` events the aggregate would emit,
with the command's ids and actor, and the read model moves with them in the same
transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from fleet_contracts.events import TaskRetried
from fleet_contracts.rest import RETRY_ALL_LISTED, RetryAllResult
from fleet_scheduler.store import ConcurrencyError, Metadata
from fleet_scheduler.uow import UnitOfWork

RETRY_ALL = (
    "WITH failed AS (SELECT id, version, retry_count, partition,"
    " row_number() OVER (PARTITION BY partition ORDER BY id) AS n FROM tasks"
    " WHERE state = 'failed' AND NOT deleted),"
    # Each partition's next positions, taken under the row locks the unit of work holds.
    " bumped AS (UPDATE log_partitions l SET next_position = l.next_position + c.n"
    " FROM (SELECT partition, count(*) AS n FROM failed GROUP BY 1) c"
    " WHERE l.id = c.partition RETURNING l.id, l.next_position - c.n AS base),"
    " appended AS (INSERT INTO events (stream_id, version, type, data, metadata,"
    " partition, partition_position)"
    " SELECT 'task-' || f.id, f.version + 1, 'task.retried',"
    " jsonb_build_object('task_id', f.id, 'retry_count', f.retry_count + 1, 'due_at', $1::text),"
    " jsonb_build_object('message_id', md5(f.id::text || clock_timestamp()::text"
    " || random()::text), 'correlation_id', $2::text, 'causation_id', $3::text,"
    " 'actor', $4::text), f.partition, b.base + f.n"
    " FROM failed f JOIN bumped b ON b.id = f.partition ORDER BY f.partition, f.n RETURNING 1)"
    " UPDATE tasks t SET state = 'pending', status = 0, reason = NULL, wait_reason = '',"
    " retry_count = t.retry_count + 1, due_at = $5, started_at = NULL, finished_at = NULL,"
    " progress = NULL, version = t.version + 1, ended_by = NULL"
    " FROM failed f WHERE t.id = f.id RETURNING t.id"
)
"""Runs in a unit of work holding every partition (retry-all names none)."""


async def retry_all(uow: UnitOfWork, metadata: Metadata, now: datetime) -> dict[str, Any]:
    """Retry every failed task; the answer is a count (and the ids while few)."""
    due = TaskRetried(task_id=0, retry_count=0, due_at=now).model_dump(mode="json")["due_at"]
    # The failed set is sorted and scanned twice: keep it in memory, not in temp files.
    await uow.conn.execute("SET LOCAL work_mem = '64MB'")
    try:
        rows = await uow.conn.fetch(
            RETRY_ALL,
            due,
            metadata.correlation_id or None,
            metadata.causation_id,
            metadata.actor,
            now,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ConcurrencyError(str(exc)) from exc
    count = len(rows)
    uow.bulk_appended += count
    # A count always; the ids only while few: the reply must fit a bus message (1 MiB).
    ids = sorted(r["id"] for r in rows) if count <= RETRY_ALL_LISTED else []
    return RetryAllResult(task_ids=ids, retried_count=count).model_dump()
