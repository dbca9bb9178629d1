"""The relay: publishes the log to EVENTS, each partition in its order, exactly once.

Only one relay runs across scheduler replicas: the one holding a session advisory lock
on its own connection; the others stand by and take over when that connection dies.

It tails every partition of the log (`partitions.py`) by its gap-free partition
position, not the log by its global position: writers of different partitions commit
in any order, so a row with a lower global position can become visible after a higher
one, but within a partition positions become visible in order. A page holds a prefix
of each partition, published in global position order.

Exactly once without trusting JetStream's duplicate window: every publish carries
`Nats-Expected-Last-Sequence`, so EVENTS stores the relay's messages back to back or not
at all (after one failed publish, every later one in the pipeline is refused too). A
batch's last message alone is acked, which proves the whole batch stored; the relay then
records each partition's position and the stream sequence together. On taking over it
reads the stream's last sequence and the messages past its record (their
`Fleet-Partition` / `Fleet-Partition-Position` headers say which rows they were), so it
knows where to go on even after a partly stored batch, a crash between ack and record,
or once every message has aged out of the stream. Every step has a deadline: a relay
blocked on a lost ack would hold the lock for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleet_contracts.subjects import (
    EVENTS,
    HDR_CORRELATION_ID,
    HDR_MESSAGE_TYPE,
    HDR_MSG_ID,
    HDR_PARTITION,
    HDR_PARTITION_POSITION,
    event_subject,
)
from fleet_scheduler import metrics
from fleet_scheduler.settings import SchedulerSettings
from fleet_scheduler.store import OutgoingEvent, PostgresRecorder, init_connection

log = structlog.get_logger(__name__)

RELAY_LOCK = 0x5C4ED002
BATCH = 1000
DEADLINE_SECONDS = 10.0
"""Longest wait for a batch's acks (or a stream lookup) before the relay lets go."""
HDR_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
LINGER_SECONDS = 0.05
"""How long the relay lets a commit's wake-up wait before it reads: it gathers more
events per page (fewer reads, fewer turns of the loop per event); EVENTS' readers get
each event that much later. Measured when the relay still shared the scheduler's event
loop: ten rounds of 100 tasks on idle phones, three pairs, median create-to-start
41.2-34.8 ms without, 38.7-31.6 ms with."""
YIELD_EVERY = 32
"""Publishes between turns given back to the loop: a page of 1,000 events is some 20 ms
of CPU, which nothing else in the process (the scheduler's loops, when the relay runs
in it) should wait for whole."""


class Links(Protocol):
    """What the relay uses of the process it runs in: the scheduler's `Context`, or the
    relay's own process (`relay_process`)."""

    settings: SchedulerSettings
    nc: Client
    js: JetStreamContext
    relay_wake: asyncio.Event
    """Set by a commit in this process (the log's NOTIFY wakes the relay in any case)."""


BatchObserver = Callable[[int, float], None]
"""Told each stored batch's event count and publishing time (`metrics.relay_batch`)."""


class OutOfStep(Exception):
    """EVENTS does not hold what the relay's record says it published."""


async def stream_last_seq(ctx: Links) -> int:
    try:
        info = await ctx.js.stream_info(EVENTS.name)
    except NotFoundError:
        return 0
    return int(info.state.last_seq or 0)


Positions = dict[int, int]
"""Partition -> the last partition position published."""


async def _record(conn: asyncpg.Connection) -> tuple[Positions, int]:
    rows = await conn.fetch("SELECT partition, position FROM relay_partitions")
    seq = await conn.fetchval("SELECT stream_seq FROM relay_position WHERE id = 1")
    return {int(r["partition"]): int(r["position"]) for r in rows}, int(seq)


async def _through(conn: asyncpg.Connection, global_position: int) -> Positions:
    """Each partition's last position at or before `global_position`: what a relay from
    before partitions had published when its newest message was that one (it published
    the log in global order)."""
    rows = await conn.fetch(
        "SELECT partition, max(partition_position) AS last FROM events"
        " WHERE position <= $1 GROUP BY partition",
        global_position,
    )
    return {int(r["partition"]): int(r["last"]) for r in rows}


async def _published_after(
    ctx: Links, conn: asyncpg.Connection, seq: int, last: int
) -> Positions | None:
    """Per partition, the highest position among EVENTS' messages seq+1..last (the
    relay's own, published but not recorded); None when one of them is gone."""
    found: Positions = {}
    legacy: list[int] = []
    for number in range(seq + 1, last + 1):
        try:
            msg = await ctx.js.get_msg(EVENTS.name, seq=number)
        except NotFoundError:
            return None
        headers = msg.headers or {}
        part, at = headers.get(HDR_PARTITION), headers.get(HDR_PARTITION_POSITION)
        if part is not None and at is not None:
            found[int(part)] = max(found.get(int(part), 0), int(at))
        elif headers.get(HDR_MSG_ID, "").isdigit():
            legacy.append(int(headers[HDR_MSG_ID]))
    if legacy:
        found = _ahead(await _through(conn, max(legacy)), found)
    return found


def _ahead(positions: Positions, published: Positions) -> Positions:
    return {p: max(positions.get(p, 0), published.get(p, 0)) for p in positions | published}


async def resume_point(ctx: Links, conn: asyncpg.Connection) -> tuple[Positions, int]:
    """(partition positions, stream sequence) to publish after: what EVENTS really holds."""
    positions, seq = await _record(conn)
    last = await asyncio.wait_for(stream_last_seq(ctx), DEADLINE_SECONDS)
    if seq == 0 and any(positions.values()):
        # A record kept before sequences were: the newest message says how far it got.
        newest = (
            await asyncio.wait_for(_published_after(ctx, conn, last - 1, last), DEADLINE_SECONDS)
            if last
            else {}
        )
        return _ahead(positions, newest or {}), last
    if last > seq:
        # Published but not recorded: at most a batch, read back from the stream.
        published = await asyncio.wait_for(_published_after(ctx, conn, seq, last), DEADLINE_SECONDS)
        if published is None:
            raise OutOfStep(f"EVENTS lost messages {seq + 1}..{last} past the relay's record")
        log.info("relay.resumed_past_record", recorded_seq=seq, stream_seq=last)
        return _ahead(positions, published), last
    if last < seq:
        # The stream lost its messages (a server restarted without its state): go on
        # from our record; the stream counts again from its own last sequence.
        log.warning("relay.stream_behind_record", recorded_seq=seq, stream_seq=last)
    return positions, last


async def publish(ctx: Links, rows: list[OutgoingEvent], after_seq: int) -> int:
    """Publish in order, each message expecting the one before it in the stream; return
    the stream sequence of the last. Raise if any was not stored.

    Only the last message asks for an ack. EVENTS stores a message only right after the
    one before it (`Nats-Expected-Last-Sequence`), so one refused (or dropped as a
    duplicate) leaves every later one refused too, the last included: its ack, at the
    sequence expected, is the proof that the whole page is stored, in order (one
    connection's publishes reach the stream in the order sent). An ack per message
    cost a reply, a future and a JSON parse for each event; the relay was the biggest
    single share of the scheduler's CPU in a flood."""
    ack: Any = None
    for i, rec in enumerate(rows):
        if i and not i % YIELD_EVERY:
            await asyncio.sleep(0)
        subject = event_subject(rec.stream_id, rec.type)
        headers = {
            HDR_MSG_ID: str(rec.position),
            HDR_CORRELATION_ID: rec.correlation_id,
            HDR_MESSAGE_TYPE: rec.type,
            HDR_EXPECTED_LAST_SEQ: str(after_seq + i),
            HDR_PARTITION: str(rec.partition),
            HDR_PARTITION_POSITION: str(rec.partition_position),
        }
        if i < len(rows) - 1:
            await ctx.nc.publish(subject, rec.body, headers=headers)
        else:
            ack = await ctx.js.publish(subject, rec.body, headers=headers, timeout=DEADLINE_SECONDS)
    last = int(ack.seq)
    if last != after_seq + len(rows) or ack.duplicate:
        raise OutOfStep(f"EVENTS at sequence {last}, expected {after_seq + len(rows)}")
    return last


RECORD = (
    "WITH parts AS (UPDATE relay_partitions r SET position = c.at"
    " FROM unnest($1::smallint[], $2::bigint[]) AS c(p, at) WHERE r.partition = c.p)"
    " UPDATE relay_position SET position = greatest(position, $3), stream_seq = $4 WHERE id = 1"
)
"""One statement: the partitions' positions and the stream sequence move together."""


async def _lead(
    ctx: Links, conn: asyncpg.Connection, stopping: asyncio.Event, on_batch: BatchObserver
) -> None:
    positions, seq = await resume_point(ctx, conn)
    log.info("relay.leading", positions=sum(positions.values()), stream_seq=seq)
    await conn.add_listener("fleet_events", lambda *_: ctx.relay_wake.set())
    recorder = PostgresRecorder(conn)
    while not stopping.is_set():
        ctx.relay_wake.clear()
        rows = await recorder.read_outgoing(positions, BATCH)
        if rows:
            started = time.perf_counter()
            seq = await asyncio.wait_for(publish(ctx, rows, seq), DEADLINE_SECONDS)
            on_batch(len(rows), time.perf_counter() - started)
            moved: Positions = {}
            for rec in rows:
                moved[rec.partition] = rec.partition_position
            positions.update(moved)
            order = sorted(moved)
            await conn.execute(
                RECORD,
                order,
                [moved[p] for p in order],
                max(rec.position for rec in rows),
                seq,
            )
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.relay_wake.wait(), 0.5)
        await asyncio.sleep(LINGER_SECONDS)


async def run(
    ctx: Links, stopping: asyncio.Event, on_batch: BatchObserver = metrics.relay_batch
) -> None:
    while not stopping.is_set():
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(ctx.settings.database_url)
            await init_connection(conn)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                await _lead(ctx, conn, stopping, on_batch)
            else:
                await conn.close()
                conn = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 1.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("relay.failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
