"""One NATS connection per process, the streams it needs, and publishing with ids.

The defaults nats-py ships are wrong for services: reconnect gives up after about two
minutes, so `connect` asks for unlimited reconnects. `ensure_streams` creates or updates
each stream from its `StreamSpec`, and is safe to call again after a server restart
that lost its state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from fleet_contracts.messages import Message
from fleet_contracts.subjects import (
    ALL_STREAMS,
    HDR_CORRELATION_ID,
    HDR_MESSAGE_TYPE,
    HDR_MSG_ID,
    StreamSpec,
)
from fleet_runtime.link import NatsLink
from fleet_runtime.metrics import NATS_DISCONNECTS, NATS_RECONNECTS
from fleet_runtime.optional_imports import nats_websockets

log = structlog.get_logger(__name__)


async def connect(
    url: str,
    name: str,
    *,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
    max_reconnect_attempts: int = -1,
    allow_reconnect: bool = True,
    link: NatsLink | None = None,
) -> Client:
    """Connect with the service defaults; `link` adds an identity, TLS and an inbox."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if any(s.startswith(("ws://", "wss://")) for s in servers):
        nats_websockets()

    async def _error(exc: Exception) -> None:
        log.warning("nats.error", error=str(exc))

    async def _disconnected() -> None:
        log.warning("nats.disconnected")
        NATS_DISCONNECTS.inc()

    async def _reconnected() -> None:
        log.info("nats.reconnected")
        NATS_RECONNECTS.inc()
        if on_reconnected is not None:
            await on_reconnected()

    return await nats.connect(
        servers=servers,
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=max_reconnect_attempts,
        allow_reconnect=allow_reconnect,
        reconnect_time_wait=0.5,
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=_error,
        disconnected_cb=_disconnected,
        reconnected_cb=_reconnected,
        **_link_options(link),
    )


def _link_options(link: NatsLink | None) -> dict[str, Any]:
    if link is None:
        return {}
    options: dict[str, Any] = {}
    if link.nkey_seed_file is not None:
        options["nkeys_seed"] = str(link.nkey_seed_file)
    if link.tls is not None:
        options["tls"] = link.tls
    if link.inbox_prefix:
        options["inbox_prefix"] = link.inbox_prefix
    return options


def stream_config(spec: StreamSpec, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description or None,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType.FILE,
        max_age=spec.max_age_seconds,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window_seconds,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )


async def ensure_streams(
    js: JetStreamContext, specs: Iterable[StreamSpec] = ALL_STREAMS, *, replicas: int = 1
) -> None:
    for spec in specs:
        config = stream_config(spec, replicas=replicas)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                log.info("stream.created", stream=spec.name)
                continue
            except BadRequestError:
                pass  # another process created it between our two calls
        await js.update_stream(config)


async def ensure_durable(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable, or update it: `pull_subscribe` ignores a changed config."""
    assert config.durable_name
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        try:
            await js.add_consumer(stream, config)
            return
        except BadRequestError:
            pass
    await js.add_consumer(stream, config)  # same name: the server updates it in place


def headers_for(message: Message, **extra: str) -> dict[str, str]:
    headers = {
        HDR_MSG_ID: message.message_id,
        HDR_CORRELATION_ID: message.correlation_id,
        HDR_MESSAGE_TYPE: type(message).__name__,
    }
    headers.update(extra)
    return headers
