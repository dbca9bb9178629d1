"""`python -m fleet_scheduler` runs the scheduler until SIGTERM / SIGINT;
`python -m fleet_scheduler rebuild-read-models` rebuilds the read models from the log."""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg
from pydantic import ValidationError

from fleet_contracts.validation import describe
from fleet_runtime.collector import settle
from fleet_runtime.logs import configure
from fleet_scheduler.app import Scheduler, open_pool
from fleet_scheduler.projections import rebuild
from fleet_scheduler.settings import SchedulerSettings


async def serve(settings: SchedulerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Scheduler(settings):
        settle()
        await stop.wait()


async def rebuild_read_models(settings: SchedulerSettings) -> int:
    pool = await open_pool(settings)
    try:
        conn: asyncpg.Connection
        async with pool.acquire() as conn:
            return await rebuild(conn)
    finally:
        await pool.close()


def main() -> None:
    try:
        settings = SchedulerSettings()
    except ValidationError as exc:
        print(f"fleet-scheduler: bad settings: {describe(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    configure("scheduler", settings.log_level)
    args = sys.argv[1:]
    if args == ["rebuild-read-models"]:
        count = asyncio.run(rebuild_read_models(settings))
        print(f"rebuilt read models from {count} events")
    elif not args:
        asyncio.run(serve(settings))
    else:
        print("usage: python -m fleet_scheduler [rebuild-read-models]", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
