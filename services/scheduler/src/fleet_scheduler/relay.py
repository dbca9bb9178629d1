"""The relay: publishes the log to EVENTS in position order, exactly once.

Only one relay runs across scheduler replicas: the one holding a session advisory lock
on its own connection; the others stand by and take over when that connection dies.
Each message carries `Nats-Msg-Id` = its position, and the published position is
recorded after JetStream acks. On taking over, the relay also reads the newest message
in EVENTS, so a crash between publish and recording does not publish anything twice,
even after JetStream's duplicate window has passed.
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


async def last_published(ctx: Context) -> int:
    """The position of the newest event already in EVENTS (0 when it is empty)."""
    try:
        info = await ctx.js.stream_info(EVENTS.name)
    except NotFoundError:
        return 0
    if not info.state.last_seq:
        return 0
    msg = await ctx.js.get_msg(EVENTS.name, seq=info.state.last_seq)
    value = (msg.headers or {}).get(HDR_MSG_ID, "0")
    return int(value) if value.isdigit() else 0


async def publish(ctx: Context, rows: list[RecordedEvent]) -> None:
    """Publish in order with pipelined acks; raise if any publish failed."""
    futures: list[asyncio.Future[Any]] = []
    for rec in rows:
        env = rec.envelope()
        futures.append(
            await ctx.js.publish_async(
                event_subject(rec.stream_id, rec.type),
                env.to_bytes(),
                headers={
                    HDR_MSG_ID: str(rec.position),
                    HDR_CORRELATION_ID: env.correlation_id,
                    HDR_MESSAGE_TYPE: rec.type,
                },
            )
        )
    await asyncio.gather(*futures)


async def _lead(ctx: Context, conn: asyncpg.Connection, stopping: asyncio.Event) -> None:
    position = max(
        await conn.fetchval("SELECT position FROM relay_position WHERE id = 1"),
        await last_published(ctx),
    )
    log.info("relay.leading", position=position)
    await conn.add_listener("fleet_events", lambda *_: ctx.relay_wake.set())
    recorder = PostgresRecorder(conn)
    while not stopping.is_set():
        ctx.relay_wake.clear()
        rows = await recorder.read_after(position, BATCH)
        if rows:
            await metrics.relay_published(publish(ctx, rows), len(rows))
            position = rows[-1].position
            await conn.execute("UPDATE relay_position SET position = $1 WHERE id = 1", position)
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
