"""Announcing this scheduler to the gateways (fleet_contracts.presence): at start, every
period while running, and `leaving` when it stops cleanly, so a gateway needs no ping
per command to know a scheduler is there."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.aio.client import Client

from fleet_contracts.presence import PRESENCE_PERIOD_SECONDS, SchedulerPresence
from fleet_contracts.subjects import SCHEDULER_PRESENCE

log = structlog.get_logger(__name__)


async def _announce(nc: Client, presence: SchedulerPresence) -> None:
    try:
        await nc.publish(SCHEDULER_PRESENCE, presence.to_bytes())
    except Exception as exc:
        # Disconnected: the gateways stop hearing us, which is what they should conclude.
        log.debug("presence.not_sent", error=str(exc))


async def run(
    nc: Client,
    scheduler_id: str,
    stopping: asyncio.Event,
    period: float = PRESENCE_PERIOD_SECONDS,
) -> None:
    alive = SchedulerPresence(scheduler_id=scheduler_id)
    while not stopping.is_set():
        await _announce(nc, alive)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
    await _announce(nc, SchedulerPresence(scheduler_id=scheduler_id, leaving=True))
    with contextlib.suppress(Exception):
        await nc.flush(timeout=1)
