"""The relay: publishes the log to EVENTS in position order, exactly once.

Only one relay runs across scheduler replicas: the one holding a session advisory lock
on its own connection; the others stand by and take over when that connection dies.

Exactly once without trusting JetStream's duplicate window: every publish carries
`Nats-Expected-Last-Sequence`, so EVENTS stores the relay's messages back to back or not
at all (after one failed publish, every later one in the pipeline is refused too), and
the relay records (position, stream sequence) after each acked batch. On taking over it
reads only the stream's last sequence: the messages past its record are the log's next
rows, so it knows where to go on even after a partly acked batch, a crash between ack
and record, or once every message has aged out of the stream. Every step has a
deadline: nats-py's publish futures never time out on their own, and a relay blocked on
a lost ack would hold the lock for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog
from nats.js.errors import NotFoundError

from fleet_contracts.subjects import (
    EVENTS,
    HDR_CORRELATION_ID,
    HDR_MESSAGE_TYPE,
    HDR_MSG_ID,
    event_subject,
)
from fleet_scheduler import metrics
from fleet_scheduler.context import Context
from fleet_scheduler.store import PostgresRecorder, RecordedEvent, init_connection

log = structlog.get_logger(__name__)

RELAY_LOCK = 0x5C4ED002
BATCH = 1000
DEADLINE_SECONDS = 10.0
"""Longest wait for a batch's acks (or a stream lookup) before the relay lets go."""
HDR_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"


class OutOfStep(Exception):
    """EVENTS does not hold what the relay's record says it published."""


async def stream_last_seq(ctx: Context) -> int:
    try:
        info = await ctx.js.stream_info(EVENTS.name)
    except NotFoundError:
        return 0
    return int(info.state.last_seq or 0)


async def _legacy_position(ctx: Context, last_seq: int) -> int:
    """The newest message's position, for a record kept before sequences were."""
    if not last_seq:
        return 0
    try:
        msg = await ctx.js.get_msg(EVENTS.name, seq=last_seq)
    except NotFoundError:
        return 0  # aged out
    value = (msg.headers or {}).get(HDR_MSG_ID, "0")
    return int(value) if value.isdigit() else 0


async def resume_point(ctx: Context, conn: asyncpg.Connection) -> tuple[int, int]:
    """(position, stream sequence) to publish after: what EVENTS really holds."""
    row = await conn.fetchrow("SELECT position, stream_seq FROM relay_position WHERE id = 1")
    position, seq = int(row["position"]), int(row["stream_seq"])
    last = await asyncio.wait_for(stream_last_seq(ctx), DEADLINE_SECONDS)
    if seq == 0 and position > 0:
        legacy = await asyncio.wait_for(_legacy_position(ctx, last), DEADLINE_SECONDS)
        return max(position, legacy), last
    if last > seq:
        # Published but not recorded: the log's rows right after our record, in order.
        ahead = await conn.fetchval(
            "SELECT position FROM events WHERE position > $1 ORDER BY position OFFSET $2 LIMIT 1",
            position,
            last - seq - 1,
        )
        if ahead is None:
            raise OutOfStep(f"EVENTS holds {last - seq} messages past the log's end")
        log.info("relay.resumed_past_record", recorded=position, published=ahead)
        return int(ahead), last
    if last < seq:
        # The stream lost its messages (a server restarted without its state): go on
        # from our record; the stream counts again from its own last sequence.
        log.warning("relay.stream_behind_record", recorded_seq=seq, stream_seq=last)
    return position, last


async def publish(ctx: Context, rows: list[RecordedEvent], after_seq: int) -> int:
    """Publish in order with pipelined acks, each expecting the one before it in the
    stream; return the stream sequence of the last. Raise if any was not stored."""
    futures: list[asyncio.Future[Any]] = []
    try:
        for i, rec in enumerate(rows):
            env = rec.envelope()
            futures.append(
                await ctx.js.publish_async(
                    event_subject(rec.stream_id, rec.type),
                    env.to_bytes(),
                    wait_stall=DEADLINE_SECONDS,
                    headers={
                        HDR_MSG_ID: str(rec.position),
                        HDR_CORRELATION_ID: env.correlation_id,
                        HDR_MESSAGE_TYPE: rec.type,
                        HDR_EXPECTED_LAST_SEQ: str(after_seq + i),
                    },
                )
            )
        acks = await asyncio.gather(*futures)
    finally:
        # An ack that never came keeps its future (and a slot of nats-py's pending
        # publishes) for ever unless cancelled.
        for future in futures:
            if not future.done():
                future.cancel()
    last = int(acks[-1].seq)
    if last != after_seq + len(rows) or any(a.duplicate for a in acks):
        raise OutOfStep(f"EVENTS at sequence {last}, expected {after_seq + len(rows)}")
    return last


async def _lead(ctx: Context, conn: asyncpg.Connection, stopping: asyncio.Event) -> None:
    position, seq = await resume_point(ctx, conn)
    log.info("relay.leading", position=position, stream_seq=seq)
    await conn.add_listener("fleet_events", lambda *_: ctx.relay_wake.set())
    recorder = PostgresRecorder(conn)
    while not stopping.is_set():
        ctx.relay_wake.clear()
        rows = await recorder.read_after(position, BATCH)
        if rows:
            seq = await metrics.relay_published(
                asyncio.wait_for(publish(ctx, rows, seq), DEADLINE_SECONDS), len(rows)
            )
            position = rows[-1].position
            await conn.execute(
                "UPDATE relay_position SET position = $1, stream_seq = $2 WHERE id = 1",
                position,
                seq,
            )
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.relay_wake.wait(), 0.5)


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(ctx.settings.database_url)
            await init_connection(conn)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                await _lead(ctx, conn, stopping)
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
