"""The unit of work: one transaction in which events are appended and projected.

Every writing transaction takes the events table lock first. That serializes appends
(the relay can then tail by position safely), and it orders every writer the same
way, so row locks taken afterwards cannot deadlock and two schedulers claiming work
see each other's committed claims.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from fleet_scheduler import metrics
from fleet_scheduler.projections import project_all
from fleet_scheduler.store import Metadata, NewEvent, PostgresRecorder, RecordedEvent


@dataclass
class UnitOfWork:
    conn: asyncpg.Connection
    metadata: Metadata
    appended: list[RecordedEvent] = field(default_factory=list)
    bulk_appended: int = 0
    """Events appended set-wise in SQL (`bulk`), not held in `appended`."""
    latencies: list[float] = field(default_factory=list)
    """Dispatch latencies of the tasks started here, observed once this commits."""

    async def append(
        self, events: Sequence[NewEvent], metadata: Metadata | None = None
    ) -> list[RecordedEvent]:
        if not events:
            return []
        recorder = PostgresRecorder(self.conn, locked=True)
        recorded = await recorder.append(events, metadata or self.metadata)
        await project_all(self.conn, recorded, self.latencies if metrics.SWITCH.on else None)
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
