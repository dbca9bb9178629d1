"""The unit of work: one transaction in which events are appended and projected.

Every writing transaction first locks the log partitions it will write (`partitions.py`:
their `log_partitions` rows, in one order), all of them unless it names fewer. Writers
of one partition are serialized (its positions become visible in order, the relay tails
it safely, and row locks taken afterwards cannot deadlock); writers of disjoint
partitions run side by side. A transaction that names no partitions takes every one,
which is what each writer did before the log was partitioned (one table lock): only the
hot paths that know their phones (dispatch, reports, creates) name them. A scheduler's
claim names the partitions it leases, and only those it still holds are locked
(`owner`), so a lease taken over mid-claim fences the old holder's claim.

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
from fleet_scheduler import partitions as parts
from fleet_scheduler.projections import hold_tasks, hold_tasks_where, project_all
from fleet_scheduler.store import (
    ConcurrencyError,
    Metadata,
    NewEvent,
    PostgresRecorder,
    RecordedEvent,
    encode,
)
from fleet_scheduler.task import TaskState
from fleet_scheduler.task_rows import Held, state_of


class PartitionNotLocked(ConcurrencyError):
    """A task event of a partition this transaction has not locked (it chose its
    partitions from what a message said): applied again with every one."""


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
    partition_count: int = 0
    """The log's partition count (serial partitions 1..count, fleet partition 0)."""
    partitions: frozenset[int] = frozenset()
    """The partitions locked (when the transaction began, or at `lock`)."""
    unlocked: tuple[list[int] | None, str | None] | None = None
    """What `lock` will lock (partitions, owner) in a transaction begun without its locks."""

    async def lock(self) -> None:
        """Take the partitions' locks now if the transaction began without them; before
        any row is locked or written, so the one lock order holds."""
        if self.unlocked is not None:
            wanted, owner = self.unlocked
            self.partition_count, self.partitions = await lock_partitions(self.conn, wanted, owner)
            self.unlocked = None

    async def load_tasks(self, ids: Iterable[int]) -> dict[int, TaskState]:
        """The tasks of `ids` that exist, by id in ascending order, their rows locked
        (read only when not held already)."""
        await self.lock()
        rows = await hold_tasks(self.conn, self.held, list(ids))
        return {row.id: state_of(row) for row in rows}

    async def load_tasks_where(self, where: str, args: Sequence[object]) -> list[TaskState]:
        """The tasks whose rows match `where` ($1.. = args), by id, their rows locked."""
        await self.lock()
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
        metadata = metadata or self.metadata
        # Serialized before the locks: a late unit of work waits for them here, and holds
        # them from here to its commit.
        encoded = encode(events, metadata)
        await self.lock()
        recorder = PostgresRecorder(self.conn, partition_count=self.partition_count)
        recorded = await recorder.append(self._with_partitions(events), metadata, encoded)
        latencies = self.latencies if metrics.SWITCH.on else None
        await project_all(self.conn, recorded, latencies, self.held)
        self.appended.extend(recorded)
        return recorded

    def _with_partitions(self, events: Sequence[NewEvent]) -> list[NewEvent]:
        """The events, each task event carrying its partition when its row is held (the
        recorder looks up only the rest). Raises `PartitionNotLocked` for a held task
        outside the partitions locked: the append would take that lock late, out of
        the one order, where it can deadlock."""
        out: list[NewEvent] = []
        for new in events:
            task_id = parts.task_id_of(new.stream_id) if new.partition is None else None
            row = self.held.rows.get(task_id) if task_id is not None else None
            if row is not None:
                part = parts.of_serial(row.serial, self.partition_count)
                if part not in self.partitions:
                    raise PartitionNotLocked(
                        f"task {row.id} (phone {row.serial}) is in partition {part},"
                        f" not among those locked: {sorted(self.partitions)}"
                    )
                # Built directly: `replace` costs several times more, for every event.
                new = NewEvent(
                    stream_id=new.stream_id,
                    event=new.event,
                    expected_version=new.expected_version,
                    metadata=new.metadata,
                    partition=part,
                )
            out.append(new)
        return out


LOCK_PARTITIONS = (
    "SELECT (SELECT count(*) - 1 FROM log_partitions) AS count,"
    " ARRAY(SELECT id FROM log_partitions"
    " WHERE ($1::smallint[] IS NULL OR id = ANY($1::smallint[]))"
    " AND ($2::text IS NULL OR (owner = $2 AND lease_expires > clock_timestamp()))"
    f" {parts.LOCK_ORDER_SQL} FOR UPDATE) AS locked"
)
"""Lock the partitions named (all when NULL), only those `owner` leases when given; the
lease is read after the lock is granted (a takeover that committed meanwhile is seen)."""


async def lock_partitions(
    conn: asyncpg.Connection, partitions: Iterable[int] | None, owner: str | None = None
) -> tuple[int, frozenset[int]]:
    """(the log's partition count, the partitions now locked)."""
    wanted = None if partitions is None else parts.lock_order(partitions)
    row = await conn.fetchrow(LOCK_PARTITIONS, wanted, owner)
    return int(row["count"]), frozenset(row["locked"])


@asynccontextmanager
async def unit_of_work(
    pool: asyncpg.Pool,
    metadata: Metadata | None = None,
    on_commit: Callable[[], None] | None = None,
    *,
    partitions: Iterable[int] | None = None,
    owner: str | None = None,
    late: bool = False,
) -> AsyncIterator[UnitOfWork]:
    """A transaction holding `partitions` (every one when None); with `owner`, only
    those of them `owner` leases (`uow.partitions` says which).

    `late`: the locks are taken at the first append or task load (`UnitOfWork.lock`),
    not when the transaction begins, so what it reads and decides first does not hold
    every other writer of those partitions back. Only for a writer that locks and writes
    no row before then: its reads may be a moment older than its append."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, metadata or Metadata())
        wanted = None if partitions is None else list(partitions)
        if late:
            uow.unlocked = (wanted, owner)
        else:
            uow.partition_count, uow.partitions = await lock_partitions(conn, wanted, owner)
        yield uow
        if uow.bulk_appended:
            # An append sends its own NOTIFY (`store.APPEND`); SQL written in bulk does not.
            await conn.execute("SELECT pg_notify('fleet_events', '')")
    metrics.committed(uow.appended, uow.latencies)
    if (uow.appended or uow.bulk_appended) and on_commit is not None:
        on_commit()
