"""The event log: append with optimistic concurrency, read by position or stream.

Two recorders keep the same contract: `PostgresRecorder` (the real log, written inside
the caller's transaction so read models change with it) and `InMemoryRecorder` (for
pure tests).

The log is partitioned (`partitions.py`): each event also takes the next gap-free
position of its stream's partition, counted in that partition's `log_partitions` row,
which the appending transaction keeps locked until it commits. So within a partition
positions become visible in order and a reader tailing one partition (the relay) never
passes a row whose transaction commits late, while writers of different partitions do
not wait for each other. The global `position` (a bigserial, taken at insert) still
orders each stream and each partition, but not the log as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import asyncpg
import pydantic_core

from fleet_contracts.events import AnyEvent, DomainEvent, EventEnvelope, envelope_json, parse_event
from fleet_contracts.messages import new_id
from fleet_scheduler import partitions as parts


class ConcurrencyError(Exception):
    """The stream moved on since it was read: the caller's decision is stale."""


@dataclass(frozen=True)
class NewEvent:
    stream_id: str
    event: DomainEvent
    expected_version: int | None = None
    """The stream's version before this event; None appends after whatever is there."""
    metadata: Metadata | None = None
    """This event's own ids, when one append carries events of several causes."""
    partition: int | None = None
    """The stream's partition when the caller knows it; else the recorder finds it."""


@dataclass(frozen=True)
class RecordedEvent:
    position: int
    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    partition: int = 0
    partition_position: int = 0
    parsed: DomainEvent | None = field(default=None, compare=False, repr=False)
    """The event itself when this process just appended it: projecting an append then
    needs no second parse of what it serialized."""

    def event(self) -> AnyEvent:
        if self.parsed is not None:
            return cast(AnyEvent, self.parsed)
        return parse_event(self.type, self.data)

    def envelope(self) -> EventEnvelope:
        return EventEnvelope(
            message_id=str(self.position),
            correlation_id=self.metadata.get("correlation_id") or new_id(),
            causation_id=self.metadata.get("causation_id"),
            occurred_at=self.recorded_at,
            position=self.position,
            stream_id=self.stream_id,
            version=self.version,
            type=self.type,
            data=self.data,
            recorded_at=self.recorded_at,
        )


@dataclass(frozen=True)
class OutgoingEvent:
    """A log row as the relay publishes it: where it stands in the log and its envelope,
    already JSON (`body`)."""

    position: int
    partition: int
    partition_position: int
    stream_id: str
    type: str
    correlation_id: str
    body: bytes


SCHEDULER_ACTOR = "scheduler"


@dataclass(frozen=True)
class Metadata:
    correlation_id: str = ""
    causation_id: str | None = None
    actor: str = SCHEDULER_ACTOR
    """Who caused the event: an API key's name, "scheduler", or "agent:<id>" (the audit)."""

    def for_event(self) -> dict[str, Any]:
        return {
            "message_id": new_id(),
            "correlation_id": self.correlation_id or None,
            "causation_id": self.causation_id,
            "actor": self.actor,
        }


def _versions(events: Sequence[NewEvent], current: dict[str, int]) -> list[int]:
    """The version each new event takes; raises when an expectation is stale."""
    versions: list[int] = []
    running = dict(current)
    for new in events:
        now = running.get(new.stream_id, 0)
        if new.expected_version is not None and new.expected_version != now:
            raise ConcurrencyError(
                f"{new.stream_id} is at version {now}, expected {new.expected_version}"
            )
        running[new.stream_id] = now + 1
        versions.append(now + 1)
    return versions


class Recorder(Protocol):
    async def append(
        self, events: Sequence[NewEvent], metadata: Metadata
    ) -> list[RecordedEvent]: ...

    async def read_after(self, position: int, limit: int) -> list[RecordedEvent]: ...

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]: ...


@dataclass
class InMemoryRecorder:
    rows: list[RecordedEvent] = field(default_factory=list)

    async def append(self, events: Sequence[NewEvent], metadata: Metadata) -> list[RecordedEvent]:
        current: dict[str, int] = {}
        for row in self.rows:
            current[row.stream_id] = max(current.get(row.stream_id, 0), row.version)
        versions = _versions(events, current)
        now = datetime.now(UTC)
        out = [
            RecordedEvent(
                position=len(self.rows) + i + 1,
                stream_id=new.stream_id,
                version=version,
                type=str(new.event.type),  # type: ignore[attr-defined]
                data=new.event.model_dump(mode="json", exclude={"type"}),
                metadata=(new.metadata or metadata).for_event(),
                recorded_at=now,
            )
            for i, (new, version) in enumerate(zip(events, versions, strict=True))
        ]
        self.rows.extend(out)
        return out

    async def read_after(self, position: int, limit: int) -> list[RecordedEvent]:
        return [r for r in self.rows if r.position > position][:limit]

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        return [r for r in self.rows if r.stream_id == stream_id]


_COLUMNS = (
    "position, stream_id, version, type, data, metadata, recorded_at, partition, partition_position"
)


def recorded_from_row(record: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=record["position"],
        stream_id=record["stream_id"],
        version=record["version"],
        type=record["type"],
        data=record["data"],
        metadata=record["metadata"],
        recorded_at=record["recorded_at"],
        partition=record.get("partition", 0),
        partition_position=record.get("partition_position", 0),
    )


APPEND = (
    "WITH given AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[],"
    " $5::text[], $6::smallint[]) WITH ORDINALITY"
    " AS g(stream_id, version, type, data, metadata, partition, n)),"
    " locked AS (SELECT id FROM log_partitions WHERE id IN (SELECT partition FROM given)"
    f" {parts.LOCK_ORDER_SQL} FOR UPDATE),"
    " bumped AS (UPDATE log_partitions l SET next_position = l.next_position + c.n"
    " FROM (SELECT partition, count(*) AS n FROM given GROUP BY partition) c"
    " JOIN locked k ON k.id = c.partition"
    " WHERE l.id = c.partition RETURNING l.id, l.next_position - c.n AS base),"
    " inserted AS (INSERT INTO events (stream_id, version, type, data, metadata, partition,"
    " partition_position) SELECT g.stream_id, g.version, g.type, g.data::jsonb, g.metadata::jsonb,"
    " g.partition, b.base + row_number() OVER (PARTITION BY g.partition ORDER BY g.n)"
    " FROM given g JOIN bumped b ON b.id = g.partition ORDER BY g.n"
    " RETURNING stream_id, version, position, recorded_at, partition_position)"
    " SELECT i.* FROM inserted i, (SELECT pg_notify('fleet_events', '')) AS woken"
)
"""Append a batch: the partitions' rows locked in the one lock order (already held when
a unit of work appends; an appender without one cannot deadlock another), each
partition's positions bumped by its count, each row given the next of its partition in
the order of the batch (and the next global position in that order), and every
follower of the log woken when the transaction commits (a NOTIFY; sent once however
many rows). Data and metadata arrive as JSON text (`encode`), cast to jsonb here.
"""


@dataclass(frozen=True)
class Encoded:
    """What an append stores of its events besides positions and versions: their types,
    data and metadata, as dicts and as JSON text.

    Made apart from the append, so that a unit of work that takes the partitions' locks
    at its first append (a create, `uow.unit_of_work(late=True)`) serializes its events
    before it locks, not while every other writer of those partitions waits: a create of
    a few hundred tasks dumps as many events and their metadata to JSON."""

    types: list[str]
    data: list[dict[str, Any]]
    metadata: list[dict[str, Any]]
    data_json: list[str]
    metadata_json: list[str]


def encode(events: Sequence[NewEvent], metadata: Metadata) -> Encoded:
    data = [e.event.model_dump(mode="json", exclude={"type"}) for e in events]
    metas = [(e.metadata or metadata).for_event() for e in events]
    return Encoded(
        types=[str(e.event.type) for e in events],  # type: ignore[attr-defined]
        data=data,
        metadata=metas,
        data_json=[jsonb_text(d) for d in data],
        metadata_json=[jsonb_text(m) for m in metas],
    )


class PostgresRecorder:
    """The log in PostgreSQL. `append` must run inside a transaction of `conn`."""

    def __init__(self, conn: asyncpg.Connection, *, partition_count: int = 0) -> None:
        self.conn = conn
        self.partition_count = partition_count
        """The log's partition count; 0: read it when first needed."""

    async def _partitions(self, events: Sequence[NewEvent]) -> list[int]:
        """Each event's partition: given, from its stream's id or its task's creation,
        else the partition the stream's first event was written to (else the fleet's)."""
        if not self.partition_count:
            self.partition_count = int(
                await self.conn.fetchval("SELECT count(*) - 1 FROM log_partitions")
            )
        count = self.partition_count
        found: dict[str, int] = {}
        for new in events:
            if new.partition is not None:
                found.setdefault(new.stream_id, new.partition)
                continue
            serial = (
                getattr(new.event, "serial", None) if new.stream_id.startswith("task-") else None
            )
            part = parts.of_stream(new.stream_id, count, serial)
            if part is not None:
                found.setdefault(new.stream_id, part)
        unknown = sorted({e.stream_id for e in events} - found.keys())
        if unknown:
            rows = await self.conn.fetch(
                "SELECT stream_id, partition FROM events"
                " WHERE stream_id = ANY($1::text[]) AND version = 1",
                unknown,
            )
            found.update((r["stream_id"], r["partition"]) for r in rows)
        # A new stream that names no phone (in production a task stream always begins
        # with its creation, which does) belongs to the fleet partition.
        return [found.get(e.stream_id, parts.FLEET) for e in events]

    async def append(
        self, events: Sequence[NewEvent], metadata: Metadata, encoded: Encoded | None = None
    ) -> list[RecordedEvent]:
        """Append `events` (`encoded`: made by `encode` from these events, in this order,
        when the caller made it ahead)."""
        if not events:
            return []
        partitions = await self._partitions(events)
        current: dict[str, int] = {}
        unknown = sorted({e.stream_id for e in events if e.expected_version is None})
        if unknown:
            rows = await self.conn.fetch(
                "SELECT stream_id, max(version) AS v FROM events"
                " WHERE stream_id = ANY($1::text[]) GROUP BY stream_id",
                unknown,
            )
            current = {r["stream_id"]: r["v"] for r in rows}
        # A stream with an expected version is taken at its word here; the unique
        # (stream_id, version) index refuses the insert if the stream moved on.
        for new in events:
            if new.expected_version is not None and new.stream_id not in current:
                current[new.stream_id] = new.expected_version
        versions = _versions(events, current)
        if encoded is None:
            encoded = encode(events, metadata)
        try:
            # One statement, one round trip: the partitions' next positions (taken under
            # their row locks, held by the unit of work already or taken here: gap-free,
            # since a rollback gives them back), the rows, and the NOTIFY. Only what the
            # database decides comes back: decoding the jsonb we just sent was a good part
            # of a large append's time.
            inserted = await self.conn.fetch(
                APPEND,
                [e.stream_id for e in events],
                versions,
                encoded.types,
                encoded.data_json,
                encoded.metadata_json,
                partitions,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrencyError(str(exc)) from exc
        # Each row's positions, found by its (stream, version): never by the order the
        # rows come back in.
        placed = {(r["stream_id"], r["version"]): r for r in inserted}
        rows = [placed[(e.stream_id, v)] for e, v in zip(events, versions, strict=True)]
        positions = [r["position"] for r in rows]
        partition_positions = [r["partition_position"] for r in rows]
        recorded_at = rows[0]["recorded_at"]
        return [
            RecordedEvent(
                position=position,
                stream_id=new.stream_id,
                version=version,
                type=kind,
                data=payload,
                metadata=meta,
                recorded_at=recorded_at,
                partition=part,
                partition_position=part_position,
                parsed=new.event,
            )
            for position, new, version, kind, payload, meta, part, part_position in zip(
                positions,
                events,
                versions,
                encoded.types,
                encoded.data,
                encoded.metadata,
                partitions,
                partition_positions,
                strict=True,
            )
        ]

    async def read_after(self, position: int, limit: int) -> list[RecordedEvent]:
        """In global position order: a complete page only where no writer of another
        partition can still commit a lower position (a locked log, a test). A reader
        tailing the live log goes by partition: `read_outgoing`."""
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2",
            position,
            limit,
        )
        return [recorded_from_row(r) for r in rows]

    async def read_outgoing(self, positions: dict[int, int], limit: int) -> list[OutgoingEvent]:
        """Up to `limit` events past `positions` (partition -> partition position), in
        global position order, as the relay publishes them. Each partition's rows come in
        order and without a gap (its positions became visible in order), so the page
        holds a prefix of each. A row's envelope is built from its JSON text: its data is
        never decoded here."""
        order = sorted(positions)
        rows = await self.conn.fetch(
            "SELECT e.* FROM unnest($1::smallint[], $2::bigint[]) AS r(p, after)"
            " CROSS JOIN LATERAL (SELECT position, partition, partition_position, stream_id,"
            " version, type, data::text AS data, metadata->>'correlation_id' AS correlation_id,"
            " metadata->>'causation_id' AS causation_id, recorded_at FROM events"
            " WHERE partition = r.p AND partition_position > r.after"
            " ORDER BY partition_position LIMIT $3) e ORDER BY e.position LIMIT $3",
            order,
            [positions[p] for p in order],
            limit,
        )
        out: list[OutgoingEvent] = []
        for r in rows:
            correlation_id = r["correlation_id"] or new_id()
            out.append(
                OutgoingEvent(
                    position=r["position"],
                    partition=r["partition"],
                    partition_position=r["partition_position"],
                    stream_id=r["stream_id"],
                    type=r["type"],
                    correlation_id=correlation_id,
                    body=envelope_json(
                        position=r["position"],
                        stream_id=r["stream_id"],
                        version=r["version"],
                        event_type=r["type"],
                        data_json=r["data"],
                        recorded_at=r["recorded_at"],
                        correlation_id=correlation_id,
                        causation_id=r["causation_id"],
                    ),
                )
            )
        return out

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version", stream_id
        )
        return [recorded_from_row(r) for r in rows]


def jsonb_text(value: Any) -> str:
    """`value` as JSON text for a jsonb parameter.

    pydantic-core's serializer, not the json module's: every event and task row crosses
    here, and the standard encoder was about a fifth of the scheduler's CPU on a create.
    Big integers stay exact and non-string keys become strings, as with `json.dumps`;
    what pydantic-core cannot write (a lone surrogate) goes to `json.dumps`, so it
    fails in PostgreSQL exactly as it did before."""
    try:
        return pydantic_core.to_json(value).decode()
    except ValueError:
        return json.dumps(value)


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python values, for every pooled connection (pydantic-core's
    parser reads jsonb's output: integers of any size stay exact, as with `json.loads`)."""
    await conn.set_type_codec(
        "jsonb",
        encoder=jsonb_text,
        decoder=pydantic_core.from_json,
        schema="pg_catalog",
        format="text",
    )
