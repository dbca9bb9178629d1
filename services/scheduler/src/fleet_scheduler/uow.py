"""The unit of work: one transaction in which events are appended and projected.

Every writing transaction takes the events table lock first. That serializes appends
(the relay can then tail by position safely), and it orders every writer the same
way, so row locks taken afterwards cannot deadlock and two schedulers claiming work
see each other's committed claims.

The unit of work holds the task rows it has read or written (`Held`): a loop that reads
tasks to decide (`load_tasks`) and then appends their events pays one read of each row,
not a second one in the projection, and a second append in the same transaction decides
on the state the first one left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from fleet_scheduler import metrics
from fleet_scheduler.projections import hold_tasks, hold_tasks_where, project_all
from fleet_scheduler.store import Metadata, NewEvent, PostgresRecorder, RecordedEvent
from fleet_scheduler.task import TaskState
from fleet_scheduler.task_rows import Held, state_of


@dataclass
class UnitOfWork:
    conn: asyncpg.Connection
    metadata: Metadata
    appended: list[RecordedEvent] = field(default_factory=list)
    bulk_appended: int = 0
    """Events appended set-wise in SQL (`bulk`), not held in `appended`."""
    latencies: list[float] = field(default_factory=list)
    """Dispatch latencies of the tasks started here, observed once this commits."""
    held: Held = field(default_factory=Held)
    """The task rows this transaction has locked or inserted, in their current state."""

    async def load_tasks(self, ids: Iterable[int]) -> dict[int, TaskState]:
        """The tasks of `ids` that exist, by id in ascending order, their rows locked
        (read only when not held already)."""
        rows = await hold_tasks(self.conn, self.held, list(ids))
        return {row.id: state_of(row) for row in rows}

    async def load_tasks_where(self, where: str, args: Sequence[object]) -> list[TaskState]:
        """The tasks whose rows match `where` ($1.. = args), by id, their rows locked."""
        rows = await hold_tasks_where(self.conn, self.held, where, args)
        return [state_of(row) for row in rows]

    def forget_tasks(self) -> None:
        """Tasks were changed in SQL (`bulk`), not by appended events: held rows are stale."""
        self.held.forget()

    async def append(
        self, events: Sequence[NewEvent], metadata: Metadata | None = None
    ) -> list[RecordedEvent]:
        if not events:
            return []
        recorder = PostgresRecorder(self.conn, locked=True)
        recorded = await recorder.append(events, metadata or self.metadata)
        latencies = self.latencies if metrics.SWITCH.on else None
        await project_all(self.conn, recorded, latencies, self.held)
        self.appended.extend(recorded)
        return recorded


@asynccontextmanager
async def unit_of_work(
    pool: asyncpg.Pool,
    metadata: Metadata | None = None,
    on_commit: Callable[[], None] | None = None,
) -> AsyncIterator[UnitOfWork]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        uow = UnitOfWork(conn, metadata or Metadata())
        yield uow
        if uow.appended or uow.bulk_appended:
            await conn.execute("SELECT pg_notify('fleet_events', '')")
    metrics.committed(uow.appended, uow.latencies)
    if (uow.appended or uow.bulk_appended) and on_commit is not None:
        on_commit()
