"""What the agent makes sure of on the bus at start and after a reconnect: the streams
(only when missing and only if this agent may make them) and its scripts' catalogue."""

from __future__ import annotations

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from fleet_agent.scripts import Script, spec_of
from fleet_agent.settings import AgentSettings
from fleet_contracts.subjects import KV_SCRIPTS, REPORTS
from fleet_runtime.bus import ensure_streams

log = structlog.get_logger(__name__)


async def publish_catalogue(
    js: JetStreamContext, settings: AgentSettings, scripts: dict[str, Script]
) -> None:
    """The specs of this host's plug-in scripts, in the `scripts` KV bucket."""
    plugins = [spec_of(script) for name, script in scripts.items() if name != "post"]
    if not plugins:
        return
    kv = await scripts_bucket(js, settings)
    for spec in plugins:
        await kv.put(spec.name, spec.model_dump_json().encode())


async def scripts_bucket(js: JetStreamContext, settings: AgentSettings) -> KeyValue:
    try:
        return await js.key_value(KV_SCRIPTS)
    except BucketNotFoundError:
        pass
    if settings.nats_nkey_seed_file is not None:
        # A host's identity may write script specs but not create buckets.
        raise RuntimeError(
            f"the KV bucket {KV_SCRIPTS!r} does not exist yet: start a gateway first"
        )
    try:
        return await js.create_key_value(config=settings.kv_config(KV_SCRIPTS))
    except BadRequestError:
        # Another service created it between our two calls.
        return await js.key_value(KV_SCRIPTS)


async def ensure_streams_if_allowed(js: JetStreamContext, settings: AgentSettings) -> None:
    """Create the streams only when they are missing and this agent may.

    The services own the streams. A host's NATS identity (its own, or its leaf
    node's) may look REPORTS up but never create or change a stream, so a host
    cannot reconfigure or delete them; until they exist its reports are retried.
    """
    try:
        await js.stream_info(REPORTS.name)
        return
    except NotFoundError:
        pass
    if settings.nats_nkey_seed_file is not None:
        log.warning("agent.streams_missing", message="waiting for the services to make them")
        return
    try:
        await ensure_streams(js, settings.streams, replicas=settings.nats_stream_replicas)
    except (NatsError, TimeoutError) as exc:
        log.warning("agent.streams_not_made", error=str(exc) or repr(exc))
