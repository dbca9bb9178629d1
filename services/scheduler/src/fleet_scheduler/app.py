"""The scheduler process: `Scheduler(settings)` starts every loop, `stop()` ends them.

Loops: commands (COMMANDS consumer), reports (REPORTS consumer), queries (request/
reply), heartbeats and liveness, the dispatcher, the relay and the presence
announcements. Usable in-process: `async with Scheduler(settings): ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

import asyncpg
import structlog
from nats.aio.client import Client

from fleet_contracts.messages import utcnow
from fleet_contracts.permissions import inbox_prefix
from fleet_runtime.bus import connect, ensure_streams
from fleet_runtime.metrics import Exporter
from fleet_scheduler import (
    autoretry,
    commands,
    dispatch,
    lease_expiry,
    liveness,
    metrics,
    partition_owners,
    presence,
    queries,
    recurring,
    relay,
    relay_process,
    reports,
    webhook_delivery,
)
from fleet_scheduler.context import Context
from fleet_scheduler.migrate import installed_partitions, migrate
from fleet_scheduler.settings import SchedulerSettings
from fleet_scheduler.store import init_connection

log = structlog.get_logger(__name__)


async def open_pool(settings: SchedulerSettings) -> asyncpg.Pool:
    """A pool on a migrated database; waits for the database to come up."""
    while True:
        try:
            conn = await asyncpg.connect(settings.database_url)
            break
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("database.unavailable", error=str(exc))
            await asyncio.sleep(1.0)
    try:
        await migrate(conn, settings.scheduler_partitions)
        installed = await installed_partitions(conn)
        if installed != settings.scheduler_partitions:
            log.warning(
                "partitions.setting_ignored",
                setting=settings.scheduler_partitions,
                installed=installed,
                reason="the partition count is fixed when the log is installed",
            )
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=2,
        max_size=settings.scheduler_db_pool_size,
        init=init_connection,
        reset=keep_session,
        server_settings={
            "idle_in_transaction_session_timeout": str(
                int(settings.scheduler_idle_transaction_seconds * 1000)
            )
        },
    )
    assert pool is not None
    return pool


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is. asyncpg's default reset is a round trip
    per release (UNLISTEN, RESET ALL, advisory unlock) to undo session state that pooled
    connections here never hold: settings are SET LOCAL, advisory locks are taken per
    transaction, and LISTEN and session locks live on dedicated connections (relay, stats,
    migrations). An open transaction is still rolled back by asyncpg itself."""


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        relay_enabled: bool = True,
        relay_process: bool = False,
    ) -> None:
        self.settings = settings or SchedulerSettings()
        self.clock = clock
        self.relay_enabled = relay_enabled
        self.relay_process = relay_process
        """The relay in a process of its own (`relay_process`) rather than in this loop."""
        self.ctx: Context | None = None
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._nc: Client | None = None
        self.metrics: Exporter | None = None

    async def start(self) -> None:
        settings = self.settings
        pool = await open_pool(settings)

        async def resubscribe() -> None:
            if self.ctx is not None:
                with contextlib.suppress(Exception):
                    await ensure_streams(
                        self.ctx.js, settings.streams, replicas=settings.nats_stream_replicas
                    )

        self._nc = await connect(
            settings.nats_url,
            f"scheduler-{settings.scheduler_id}",
            on_reconnected=resubscribe,
            link=settings.nats_link(inbox_prefix("scheduler")),
        )
        js = self._nc.jetstream()
        await ensure_streams(js, settings.streams, replicas=settings.nats_stream_replicas)
        self.ctx = ctx = Context(
            settings=settings,
            pool=pool,
            nc=self._nc,
            js=js,
            clock=self.clock,
            rng=random.Random(settings.scheduler_seed),
            started_at=self.clock(),
        )
        async with pool.acquire() as conn:
            ctx.partition_count = await installed_partitions(conn)
        # Partitions first: a lone scheduler claims in all of them from its first pass.
        try:
            await partition_owners.take_turn(ctx)
        except Exception as exc:
            log.warning("partitions.turn_failed", error=str(exc) or repr(exc))
        await queries.serve(ctx)
        await liveness.subscribe_heartbeats(ctx)
        # The subscriptions reach the server before start returns: a query sent the
        # moment after (a test, a gateway started beside it) met "no responders" once.
        await self._nc.flush()
        stopping = self._stopping
        loops = [commands.run(ctx, stopping), reports.run(ctx, stopping)]
        loops += [liveness.run(ctx, stopping), dispatch.run(ctx, stopping)]
        loops.append(lease_expiry.run(ctx, stopping))
        loops.append(partition_owners.run(ctx, stopping))
        loops += [autoretry.run(ctx, stopping), recurring.run(ctx, stopping)]
        loops.append(webhook_delivery.run(ctx, stopping))
        if self.relay_enabled and self.relay_process:
            loops.append(relay_process.supervise(settings, stopping))
        elif self.relay_enabled:
            loops.append(relay.run(ctx, stopping))
        loops.append(presence.run(ctx.nc, settings.scheduler_id, stopping))
        self._loops = [asyncio.create_task(loop) for loop in loops]
        self.metrics = metrics.start(ctx)
        log.info("scheduler.started", scheduler_id=settings.scheduler_id)

    async def stop(self) -> None:
        self._stopping.set()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=3.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
        if self.ctx is not None:
            for task in list(self.ctx.background):
                task.cancel()
            await asyncio.gather(*self.ctx.background, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 3.0)
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self.ctx is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ctx.pool.close(), 3.0)
        log.info("scheduler.stopped")

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
