"""The agent's heartbeat: every few seconds, each phone and the run it holds, on core
NATS (`heartbeat.<agent_id>`); a scheduler that hears none for its lease declares the
agent lost, and reconciles its runs with what the heartbeat lists."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from nats.aio.client import Client

from fleet_agent.settings import AgentSettings
from fleet_contracts.agent import DeviceStatus, Heartbeat
from fleet_contracts.subjects import heartbeat_subject

log = structlog.get_logger(__name__)


async def beat(
    nc: Client,
    settings: AgentSettings,
    incarnation: str,
    devices: Callable[[], list[DeviceStatus]],
    cache_status: Callable[[], dict[str, int]],
) -> None:
    """Send heartbeats until cancelled."""
    interval = settings.agent_heartbeat_seconds
    subject = heartbeat_subject(settings.agent_id)
    while True:
        heartbeat = Heartbeat(
            agent_id=settings.agent_id,
            host=settings.agent_host,
            devices=devices(),
            interval_seconds=interval,
            incarnation=incarnation,
            material_cache=cache_status(),
        )
        try:
            # Defaults left out: a 1,000-phone heartbeat stays ~45 kB, one message.
            await nc.publish(subject, heartbeat.model_dump_json(exclude_defaults=True).encode())
        except Exception as exc:
            log.warning("heartbeat.failed", error=str(exc))
        await asyncio.sleep(interval)
