"""`GET /api/v1/events`: the EVENTS stream as Server-Sent Events, for ops watching live.

Each SSE event's `id` is the EVENTS stream sequence, `event` the event type and `data`
the `EventEnvelope` JSON; a client that reconnects with `Last-Event-ID` (or
`?last_event_id=` / `?since=`) resumes right after that id. Every client gets its own
ordered, ephemeral consumer, dropped when the client goes.

Bounded per client and per caller: a client that does not take an event within
`FLEET_API_SSE_SEND_TIMEOUT_SECONDS` (10 s) is cut off - its consumer and slot are
given back, so one stalled reader never holds events or memory for the others - and
one caller (API key, or "local") may hold `FLEET_API_SSE_MAX_STREAMS_PER_CALLER` (20)
streams at once; one more is a 429 (42901). Filters run on the event's subject (see
`feed`), so the gateway does not parse every event for every client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import nats.errors
import structlog
from fastapi import APIRouter, Header, Query, Request
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from fleet_api.docs import errors
from fleet_api.errors import ApiError, unavailable
from fleet_api.feed import FeedFilter, resume_after, type_of_subject
from fleet_api.routes.params import MAX_ID, ApiCaller, Text
from fleet_api.state import Gateway, gateway
from fleet_contracts.codes import ErrorCode
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
    while True:
        msg = await sub.next_msg(timeout=None)
        if feed.accepts(msg.subject, msg.data):
            yield ServerSentEvent(
                id=str(msg.metadata.sequence.stream),
                event=type_of_subject(msg.subject),
                data=msg.data.decode(),
            )


class FeedResponse(EventSourceResponse):
    """An SSE response that gives back its subscription and its caller's stream slot
    however it ends, and ends quietly when the client stops reading."""

    def __init__(
        self, sub: Subscription, feed: FeedFilter, release: Callable[[], None], send_timeout: float
    ) -> None:
        super().__init__(_events(sub, feed), ping=HEARTBEAT_SECONDS, send_timeout=send_timeout)
        self._sub = sub
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # The client stopped reading: its socket is full. Drop the stream rather
            # than hold a subscription and a slot for a reader that may never return;
            # the server closes the connection once what is buffered has drained.
            log.warning("events.reader_stalled", send_timeout=self.send_timeout)
        finally:
            self._release()
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


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
        **errors(429),
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
    gw = gateway(request)
    release = take_stream_slot(gw, caller.actor)
    try:
        sub = await _subscribe(gw, feed, after)
    except BaseException:
        release()
        raise
    log.info("events.follow", subject=feed.subject(), after=after)
    return FeedResponse(sub, feed, release, gw.settings.api_sse_send_timeout_seconds)


def take_stream_slot(gw: Gateway, actor: str) -> Callable[[], None]:
    """Count one more live stream for `actor`, or 429 (42901) at the cap; returns the
    function that gives the slot back (safe to call more than once)."""
    cap = gw.settings.api_sse_max_streams_per_caller
    held = gw.streams.get(actor, 0)
    if held >= cap:
        raise ApiError(
            ErrorCode.TOO_MANY_STREAMS,
            f"{actor!r} already has {held} live event streams open, the limit "
            "(FLEET_API_SSE_MAX_STREAMS_PER_CALLER); close one first",
        )
    gw.streams[actor] = held + 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gw.streams[actor] -= 1
            if not gw.streams[actor]:
                del gw.streams[actor]

    return release
