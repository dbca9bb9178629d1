"""`python -m fleet_scheduler` runs the scheduler until SIGTERM / SIGINT;
`python -m fleet_scheduler rebuild-read-models` rebuilds the read models from the log;
`python -m fleet_scheduler relay` is the relay's own process, which a scheduler starts
(`relay_process.py`), not an operator."""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg
from pydantic import ValidationError

from fleet_contracts.validation import describe
from fleet_runtime.collector import settle
from fleet_runtime.logs import configure
from fleet_scheduler import relay_process
from fleet_scheduler.app import Scheduler, open_pool
from fleet_scheduler.projections import rebuild
from fleet_scheduler.settings import SchedulerSettings


async def serve(settings: SchedulerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Scheduler(settings, relay_process=settings.scheduler_relay_process):
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
    args = sys.argv[1:]
    if args == ["relay"]:
        # Started by a scheduler (`relay_process`), which hands over its own settings.
        settings = relay_process.read_settings()
        configure("scheduler-relay", settings.log_level)
        asyncio.run(relay_process.serve(settings))
        return
    configure("scheduler", settings.log_level)
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
