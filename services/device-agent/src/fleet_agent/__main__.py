"""`python -m fleet_agent`: run the device agent until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import structlog
from nats.errors import Error as NatsError
from pydantic import ValidationError

from fleet_agent.app import Agent
from fleet_agent.settings import AgentSettings
from fleet_runtime.collector import settle
from fleet_runtime.logs import configure


async def _serve(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings)
    # Starting waits for NATS as long as it takes; a signal meanwhile still ends us.
    starting = asyncio.create_task(agent.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            settle()
            await stopping
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        stopping.cancel()
        await agent.stop()


def _settings() -> AgentSettings:
    try:
        return AgentSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FLEET_{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors()
        )
        print(f"fleet-agent: bad configuration: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    settings = _settings()
    configure("device-agent", settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except (OSError, NatsError) as exc:
        structlog.get_logger(__name__).error("agent.failed", error=str(exc) or repr(exc))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
