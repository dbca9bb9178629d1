"""Task stats answered from memory: a snapshot of the `task_counts` counters, read again
only when a commit may have moved them.

The snapshot is marked stale by every commit of this scheduler (`Context.appended`,
called after the commit and before the command's reply) and by every other scheduler's
commit (the `fleet_events` NOTIFY each appending transaction sends, heard on a
dedicated LISTEN connection). The counters stay the truth: a notification only says
"read again". While the LISTEN connection is down, nothing is cached (another
scheduler's commit could go unheard); a snapshot older than `MAX_AGE_SECONDS` is read
again whatever was heard, a bound for what no notification announces (a
`rebuild-read-models` run, a connection that died without closing).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import structlog

from fleet_contracts.codes import TaskStatus
from fleet_contracts.rest import TaskStats

log = structlog.get_logger(__name__)

CHANNEL = "fleet_events"
MAX_AGE_SECONDS = 5.0
RECONNECT_SECONDS = 1.0

# Summed over scripts, sources and the partitions the counters are kept per (110).
COUNTS = "SELECT status, sum(count)::bigint AS count FROM task_counts GROUP BY status"


def stats_from(rows: list[asyncpg.Record]) -> TaskStats:
    counts = {TaskStatus(r["status"]).name.lower(): r["count"] for r in rows}
    return TaskStats(total=sum(counts.values()), **counts)


class StatsSnapshot:
    """The last stats read and the commit generation it was read at. A read is served
    only if no commit was heard since it began, so a stats asked after a commit this
    process saw always counts that commit."""

    def __init__(self, max_age: float = MAX_AGE_SECONDS) -> None:
        self.max_age = max_age
        self.listening = False
        self._generation = 0
        self._stats: TaskStats | None = None
        self._read_generation = -1
        self._read_at = 0.0
        self._inflight: tuple[int, asyncio.Future[TaskStats]] | None = None

    def stale(self) -> None:
        self._generation += 1

    def _fresh(self) -> bool:
        return (
            self._stats is not None
            and self.listening
            and self._read_generation == self._generation
            and time.monotonic() - self._read_at < self.max_age
        )

    async def get(self, pool: asyncpg.Pool) -> TaskStats:
        if self._fresh():
            assert self._stats is not None
            return self._stats
        # Requests that find the snapshot stale at the same generation share one read
        # (a burst of stats under a flood is one query, not one each).
        generation = self._generation
        if self._inflight is not None and self._inflight[0] == generation:
            return await asyncio.shield(self._inflight[1])
        future: asyncio.Future[TaskStats] = asyncio.get_running_loop().create_future()
        self._inflight = (generation, future)
        try:
            async with pool.acquire() as conn:
                stats = stats_from(await conn.fetch(COUNTS))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joiners re-raise it, nobody else must
            raise
        finally:
            if self._inflight is not None and self._inflight[1] is future:
                self._inflight = None
        if generation > self._read_generation:
            self._stats, self._read_generation = stats, generation
            self._read_at = time.monotonic()
        future.set_result(stats)
        return stats

    async def listen(self, dsn: str) -> None:
        """Hear every scheduler's commits until cancelled; reconnects after a loss."""
        while True:
            try:
                await self._listen_once(dsn)
                log.warning("task_stats.listen_lost")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("task_stats.listen_failed", error=str(exc))
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen_once(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, lambda *_: self.stale())
            # Commits made while nobody listened were not heard.
            self.stale()
            self.listening = True
            await lost.wait()
        finally:
            self.listening = False
            if not conn.is_closed():
                conn.terminate()
