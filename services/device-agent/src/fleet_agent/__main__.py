"""`python -m fleet_agent`: run the device agent until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog

from fleet_runtime.logs import configure
from fleet_agent.app import Agent
from fleet_agent.settings import AgentSettings


async def _serve(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()


def main() -> None:
    settings = AgentSettings()
    configure("device-agent", settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        structlog.get_logger(__name__).error("agent.failed", error=str(exc))
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
