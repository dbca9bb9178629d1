"""`GET /api/v1/events`: the EVENTS stream as Server-Sent Events, for ops watching live.

Each SSE event's `id` is the EVENTS stream sequence, `event` the event type and `data`
the `EventEnvelope` JSON; a client that reconnects with `Last-Event-ID` (or
`?last_event_id=` / `?since=`) resumes right after that id. Every client gets its own
ordered, ephemeral consumer, dropped when the client goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import nats.errors
import structlog
from fastapi import APIRouter, Header, Query, Request
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from fleet_api.docs import errors
from fleet_api.errors import unavailable
from fleet_api.feed import FeedFilter, resume_after
from fleet_api.routes.params import MAX_ID, ApiCaller, Text
from fleet_api.state import Gateway, gateway
from fleet_contracts.events import EventEnvelope
from fleet_contracts.subjects import EVENTS

log = structlog.get_logger(__name__)
router = APIRouter(tags=["events"])

HEARTBEAT_SECONDS = 15


async def _subscribe(gw: Gateway, feed: FeedFilter, after: int | None) -> Subscription:
    if not gw.nc.is_connected:
        raise unavailable("the message bus (NATS) is not reachable; try again shortly")
    if after is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    else:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
        )
    try:
        return await gw.js.subscribe(
            feed.subject(),
            stream=EVENTS.name,
            ordered_consumer=True,
            config=config,
            inactive_threshold=60,
        )
    except nats.errors.Error as exc:
        raise unavailable(f"the EVENTS stream cannot be read: {exc}") from exc


async def _events(sub: Subscription, feed: FeedFilter) -> AsyncIterator[ServerSentEvent]:
    try:
        while True:
            msg = await sub.next_msg(timeout=None)
            try:
                envelope = EventEnvelope.from_bytes(msg.data)
            except ValidationError:
                log.warning("events.unreadable", subject=msg.subject)
                continue
            if feed.accepts(envelope):
                yield ServerSentEvent(
                    id=str(msg.metadata.sequence.stream),
                    event=envelope.type,
                    data=msg.data.decode(),
                )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@router.get(
    "/events",
    summary="Live events as Server-Sent Events (filter by task, device, type; resumable)",
    response_model=None,
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "text/event-stream: `id` = stream sequence, `event` = type, "
            "`data` = EventEnvelope JSON; a comment line every 15 s keeps it alive",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(),
    },
)
async def events(
    request: Request,
    caller: ApiCaller,
    task_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="one task's events")] = None,
    serial: Text = None,
    event_type: Annotated[
        str | None,
        Query(
            alias="type", max_length=100, description="event type prefix: task. or task.completed"
        ),
    ] = None,
    last_event_id: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="resume after this event id")
    ] = None,
    since: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="same as last_event_id")
    ] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", description="resume after this event id")
    ] = None,
) -> EventSourceResponse:
    feed = FeedFilter(task_id=task_id, serial=serial, type_prefix=event_type or None)
    after = resume_after(last_event_id_header, last_event_id, since)
    sub = await _subscribe(gateway(request), feed, after)
    log.info("events.follow", subject=feed.subject(), after=after)
    return EventSourceResponse(_events(sub, feed), ping=HEARTBEAT_SECONDS)
