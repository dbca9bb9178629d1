"""`GET /api/v1/heartbeats`: the agents' heartbeats as Server-Sent Events.

Heartbeats are core-NATS messages (`heartbeat.<agent_id>`), not log events, so they are
not in `/api/v1/events`; the console's overview shows each agent's last heartbeat and
its phones' battery and busy state from this stream. Nothing is stored, so there is
nothing to resume: a reconnecting client hears every agent again within one period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
import structlog
from fastapi import APIRouter, Request
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from fleet_api.docs import errors
from fleet_api.errors import unavailable
from fleet_api.routes.params import ApiCaller
from fleet_api.state import gateway
from fleet_contracts.agent import Heartbeat
from fleet_contracts.subjects import HEARTBEAT_WILDCARD

log = structlog.get_logger(__name__)
router = APIRouter(tags=["events"])

PING_SECONDS = 15
# A slow reader loses old heartbeats rather than holding the gateway's memory: the
# next one from the same agent says everything the dropped one did.
PENDING_LIMIT = 256


async def _heartbeats(
    sub: Subscription, queue: asyncio.Queue[Msg]
) -> AsyncIterator[ServerSentEvent]:
    try:
        while True:
            msg = await queue.get()
            try:
                beat = Heartbeat.model_validate_json(msg.data)
            except ValidationError:
                log.warning("heartbeats.unreadable", subject=msg.subject)
                continue
            yield ServerSentEvent(event="agent.heartbeat", data=beat.model_dump_json())
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@router.get(
    "/heartbeats",
    summary="Live agent heartbeats (host, phones, busy, battery) as Server-Sent Events",
    response_model=None,
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "text/event-stream: `event` = agent.heartbeat, `data` = the "
            "heartbeat JSON (agent_id, host, devices, interval_seconds, occurred_at)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(),
    },
)
async def heartbeats(request: Request, caller: ApiCaller) -> EventSourceResponse:
    gw = gateway(request)
    if not gw.nc.is_connected:
        raise unavailable("the message bus (NATS) is not reachable; try again shortly")
    queue: asyncio.Queue[Msg] = asyncio.Queue(PENDING_LIMIT)

    async def keep(msg: Msg) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(msg)

    try:
        sub = await gw.nc.subscribe(HEARTBEAT_WILDCARD, cb=keep)
    except nats.errors.Error as exc:
        raise unavailable(f"cannot follow heartbeats: {exc}") from exc
    return EventSourceResponse(_heartbeats(sub, queue), ping=PING_SECONDS)
