"""Webhook delivery: a durable consumer on EVENTS that POSTs each wanted event, signed.

Why the scheduler delivers (not the gateway): hooks, their secrets and the delivery
record live in PostgreSQL, which belongs to the scheduler alone. Every replica runs
this loop on ONE shared durable pull consumer (`scheduler-webhooks`), so each event is
handed to one replica at a time; the delivery record keeps a 2xx answer once per
(hook, delivery id), so a redelivered event is never sent again to a hook that took it.

Per event: the hooks that want its type (or `batch.finished`, derived when the task
that just ended was its create's last unfinished one) and were registered before it
are called concurrently, each bounded by a timeout. Any failure (non-2xx, timeout,
refused) is recorded and the message is nak'ed with an exponential back-off; after
`max_attempts` the attempt is recorded as the last and the event is let go. The loop
runs beside dispatch with its own HTTP client: a dead endpoint slows only deliveries.

With no hook registered nothing is consumed: the durable is deleted, and made again
when a hook appears, starting a minute before the oldest hook's registration (events
older than a hook are never sent to it), so a fleet without hooks pays nothing per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError
from standardwebhooks import Webhook

from fleet_contracts.events import EventEnvelope
from fleet_contracts.subjects import EVENTS, SCHEDULER_WEBHOOKS_CONSUMER
from fleet_contracts.webhooks import BATCH_FINISHED, payload
from fleet_runtime.bus import ensure_streams
from fleet_scheduler.context import Context

if TYPE_CHECKING:
    # httpx (with the click and rich it imports) is a tenth of a second of every start;
    # it is imported when the first hook appears, and most fleets never register one.
    import httpx

log = structlog.get_logger(__name__)

ENDINGS = ("task.completed", "task.failed", "task.stopped", "task.deleted")
MAX_BACKOFF_SECONDS = 600.0
HOOKED_BATCH = 8
IDLE_SECONDS = 1.0
"""How often a replica with no hooks looks for one."""


def backoff_seconds(attempt: int, base: float) -> float:
    """The pause after failed attempt number `attempt` (1-based): base, 2 base, 4 base…"""
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** (attempt - 1)))


def signed_headers(secret: str, delivery_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery attempt."""
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, at, body),
    }


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    event_type: str
    body: str


@dataclass(frozen=True)
class Hook:
    id: int
    url: str
    secret: str
    event_types: frozenset[str] = frozenset()
    from_position: int = 0
    created_at: datetime | None = None


async def load_hooks(ctx: Context) -> list[Hook]:
    """Every hook with its secret: a small table, read once per fetched batch."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT w.id, w.url, w.event_types, w.from_position, w.created_at, s.secret"
            " FROM webhooks w"
            " JOIN webhook_secrets s ON s.hook_id = w.id ORDER BY w.id"
        )
    return [
        Hook(
            r["id"],
            r["url"],
            r["secret"],
            frozenset(r["event_types"]),
            r["from_position"],
            r["created_at"],
        )
        for r in rows
    ]


async def _batch_finished(conn: asyncpg.Connection, env: EventEnvelope) -> Delivery | None:
    task_id = env.data.get("task_id")
    row = await conn.fetchrow(
        "SELECT batch_id FROM tasks WHERE id = $1 AND batch_id IS NOT NULL", task_id
    )
    if row is None:
        return None
    counts = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE state IN ('pending', 'dispatched', 'running')"
        " AND NOT deleted) AS open, count(*) FILTER (WHERE state = 'completed') AS completed,"
        " count(*) FILTER (WHERE state = 'failed') AS failed, array_agg(id ORDER BY id) AS ids"
        " FROM tasks WHERE batch_id = $1",
        row["batch_id"],
    )
    if counts["open"]:
        return None
    data = {
        "batch_id": row["batch_id"],
        "task_ids": list(counts["ids"]),
        "completed": counts["completed"],
        "failed": counts["failed"],
    }
    body = json.dumps(payload(BATCH_FINISHED, env.recorded_at, data))
    return Delivery(f"batch_{row['batch_id']}", BATCH_FINISHED, body)


async def deliveries_of(
    conn: asyncpg.Connection, env: EventEnvelope, wanted: set[str]
) -> list[Delivery]:
    out: list[Delivery] = []
    if env.type in wanted:
        data = {**env.data, "position": env.position, "stream_id": env.stream_id}
        body = json.dumps(payload(env.type, env.recorded_at, data))
        out.append(Delivery(f"evt_{env.position}", env.type, body))
    if env.type in ENDINGS and BATCH_FINISHED in wanted:
        finished = await _batch_finished(conn, env)
        if finished is not None:
            out.append(finished)
    return out


async def _attempt(ctx: Context, client: httpx.AsyncClient, hook: Hook, delivery: Delivery) -> bool:
    """One POST; the attempt is recorded; True when the hook has it (now or before)."""
    async with ctx.pool.acquire() as conn:
        before = await conn.fetchrow(
            "SELECT bool_or(delivered) AS delivered, count(*) AS attempts"
            " FROM webhook_deliveries WHERE hook_id = $1 AND delivery_id = $2",
            hook.id,
            delivery.delivery_id,
        )
    if before["delivered"]:
        return True
    attempt = before["attempts"] + 1
    now = datetime.now(UTC)
    status: int | None = None
    error: str | None = None
    import httpx  # imported already by whoever made `client`: a dictionary look-up

    try:
        response = await client.post(
            hook.url,
            content=delivery.body.encode(),
            headers=signed_headers(hook.secret, delivery.delivery_id, now, delivery.body),
        )
        status = response.status_code
        if not 200 <= status < 300:
            error = f"answered HTTP {status}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    delivered = error is None
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO webhook_deliveries (hook_id, delivery_id, event_type, attempt,"
            " status_code, error, delivered) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT DO NOTHING",
            hook.id,
            delivery.delivery_id,
            delivery.event_type,
            attempt,
            status,
            error,
            delivered,
        )
    log.info(
        "webhook.attempt",
        hook_id=hook.id,
        delivery_id=delivery.delivery_id,
        attempt=attempt,
        status=status,
        error=error,
    )
    return delivered


async def deliver(
    ctx: Context, client: httpx.AsyncClient, env: EventEnvelope, hooks: list[Hook]
) -> bool:
    """Deliver one event to every hook that wants it; True when nothing is left to retry."""
    # A hook hears of events recorded after it was registered, not before.
    hooks = [h for h in hooks if h.from_position < env.position]
    wanted = {t for h in hooks for t in h.event_types}
    if env.type not in wanted and not (env.type in ENDINGS and BATCH_FINISHED in wanted):
        return True
    async with ctx.pool.acquire() as conn:
        deliveries = await deliveries_of(conn, env, wanted)
    jobs = [
        _attempt(ctx, client, hook, d)
        for hook in hooks
        for d in deliveries
        if d.event_type in hook.event_types
    ]
    results = await asyncio.gather(*jobs)
    return all(results)


async def on_message(ctx: Context, client: httpx.AsyncClient, msg: Msg, hooks: list[Hook]) -> None:
    try:
        env = EventEnvelope.model_validate_json(msg.data)
    except ValueError:
        await msg.ack()  # not an event of ours: nothing to deliver, ever
        return
    attempt = msg.metadata.num_delivered or 1
    if await deliver(ctx, client, env, hooks):
        await msg.ack()
        return
    if attempt >= ctx.settings.scheduler_webhook_max_attempts:
        log.warning("webhook.gave_up", position=env.position, attempts=attempt)
        await msg.ack()
        return
    await msg.nak(delay=backoff_seconds(attempt, ctx.settings.scheduler_webhook_backoff_seconds))


def consumer_config(ctx: Context, hooks: list[Hook]) -> ConsumerConfig:
    """The shared durable, made when the first hook exists: from a minute before the
    oldest hook (clocks differ a little), so no event a hook should hear is skipped."""
    oldest = min(h.created_at or datetime.now(UTC) for h in hooks)
    return ConsumerConfig(
        durable_name=SCHEDULER_WEBHOOKS_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=oldest - timedelta(minutes=1),
        ack_wait=max(30.0, (HOOKED_BATCH + 1) * ctx.settings.scheduler_webhook_timeout_seconds),
        max_deliver=-1,
        max_ack_pending=1000,
    )


async def _ensure_consumer(ctx: Context, hooks: list[Hook]) -> None:
    """Create the durable if missing; never update it (its start cannot change)."""
    try:
        await ctx.js.consumer_info(EVENTS.name, SCHEDULER_WEBHOOKS_CONSUMER)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):  # another replica made it meanwhile
            await ctx.js.add_consumer(EVENTS.name, consumer_config(ctx, hooks))


async def _drop_consumer(ctx: Context) -> None:
    """No hooks: nothing is consumed, so events cost the schedulers nothing."""
    with contextlib.suppress(NotFoundError):
        await ctx.js.delete_consumer(EVENTS.name, SCHEDULER_WEBHOOKS_CONSUMER)


def _http_client(ctx: Context) -> httpx.AsyncClient:
    import httpx

    timeout = httpx.Timeout(ctx.settings.scheduler_webhook_timeout_seconds)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False)


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as stack:
        client: httpx.AsyncClient | None = None
        dropped = False
        while not stopping.is_set():
            try:
                hooks = await load_hooks(ctx)
                if not hooks:
                    if not dropped:
                        await _drop_consumer(ctx)
                        dropped = True
                    await _pause(stopping, IDLE_SECONDS)
                    continue
                dropped = False
                if client is None:
                    client = await stack.enter_async_context(_http_client(ctx))
                settings = ctx.settings
                await ensure_streams(
                    ctx.js, settings.streams, replicas=settings.nats_stream_replicas
                )
                await _ensure_consumer(ctx, hooks)
                sub = await ctx.js.pull_subscribe_bind(SCHEDULER_WEBHOOKS_CONSUMER, EVENTS.name)
            except Exception as exc:
                log.warning("webhooks.subscribe_failed", error=str(exc))
                await _pause(stopping, 1.0)
                continue
            try:
                while hooks and not stopping.is_set():
                    try:
                        msgs = await sub.fetch(HOOKED_BATCH, timeout=1.0)
                    except (TimeoutError, NatsTimeoutError):
                        hooks = await load_hooks(ctx)
                        continue
                    # Read after the fetch: a hook is committed before any event it
                    # should hear of is relayed, so every such hook is seen here.
                    hooks = await load_hooks(ctx)
                    for msg in msgs:
                        if stopping.is_set():
                            return
                        with contextlib.suppress(Exception):
                            await msg.in_progress()
                        try:
                            await on_message(ctx, client, msg, hooks)
                        except Exception as exc:
                            log.warning("webhooks.message_failed", error=str(exc))
                            await msg.nak(delay=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhooks.fetch_failed", error=str(exc))
                await _pause(stopping, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
