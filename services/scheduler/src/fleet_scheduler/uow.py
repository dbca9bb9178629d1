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

from fleet_scheduler.projections import project
from fleet_scheduler.store import Metadata, NewEvent, PostgresRecorder, RecordedEvent


@dataclass
class UnitOfWork:
    conn: asyncpg.Connection
    metadata: Metadata
    appended: list[RecordedEvent] = field(default_factory=list)

    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        recorded = await PostgresRecorder(self.conn).append(events, self.metadata)
        for rec in recorded:
            await project(self.conn, rec)
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
    if uow.appended and on_commit is not None:
        on_commit()
