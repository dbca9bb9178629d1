"""The FastAPI application: routers, error envelopes, docs, and the lifespan that
connects to NATS, ensures the streams and loads the keys and the script catalogue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from fleet_api import console, docs, errors, metrics
from fleet_api.bodysize import BodySizeMiddleware
from fleet_api.catalogue import parse_spec
from fleet_api.correlation import CorrelationMiddleware
from fleet_api.keys import KeyRecord, parse_record
from fleet_api.kv import Mirror, open_bucket
from fleet_api.routes import (
    artifacts,
    custom_scripts,
    events,
    fleet,
    heartbeats,
    keys,
    materials,
    rpc,
    scheduling,
    system,
    tasks,
)
from fleet_api.sameorigin import SameOriginMiddleware
from fleet_api.settings import ApiSettings
from fleet_api.state import Gateway
from fleet_contracts.materials import ARTIFACTS_BUCKET, MATERIALS_BUCKET
from fleet_contracts.permissions import inbox_prefix
from fleet_contracts.scripts import ScriptSpec
from fleet_contracts.subjects import KV_API_KEYS, KV_SCRIPTS
from fleet_runtime.bus import connect, ensure_streams
from fleet_runtime.objects import ensure_bucket

log = structlog.get_logger(__name__)

_LOAD_TIMEOUT_SECONDS = 10.0
GATEWAY_INBOX = inbox_prefix("gateway")

DESCRIPTION = """\
TikMatrix-compatible task API for fleets of Android phones.

Every response is the envelope `{"code": int, "message": str, "data": any}`; `code` 0
is success. Errors carry a 5-digit code whose first three digits are the HTTP status
(40001 invalid parameters, 40002 missing script_name, 40003 script not supported,
40101 missing or unknown API key, 40301 plan without API access or over its device
limit, 40302 key role too low, 40303 no live lease, 40304 adb passthrough off, 40305
cross-site request refused, 40401 not found, 40501 method not allowed, 40901 wrong
state (or an Idempotency-Key reused with another body), 41301 body too large, 42901 too
many live event streams, 50001 internal error, 50301 bus or scheduler unavailable).
A 405 carries `Allow` with every method the path serves.

Keys: authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. A gateway
with keys requires one on every request but the probes and these docs; a keyless
gateway (loopback with no key configured) requires none - the `security` of each
operation in this document says which case this server is in. A keyless gateway
answers only a loopback `Host` (or one in FLEET_API_ALLOWED_HOSTS), and any gateway
refuses a state-changing request whose `Origin` is another site (curl and other
non-browser clients send no `Origin`). Bodies above FLEET_API_MAX_BODY_BYTES (1 MiB)
are refused with 413 before they are read.

Every response carries `X-Correlation-Id` (yours, from `X-Correlation-Id` /
`X-Request-Id`, or a new one).
"""


class StartRefused(RuntimeError):
    """The gateway must not serve with this configuration (the message says why)."""


def start_problem(settings: ApiSettings, keys: dict[str, KeyRecord]) -> str | None:
    if keys or not settings.keys_required:
        return None
    return (
        f"refusing to serve on {settings.api_host}: API keys are required there and none "
        "exist; create one with `python -m fleet_api keys create --name NAME --plan pro`, "
        "or bind to 127.0.0.1"
    )


async def open_gateway(settings: ApiSettings) -> Gateway:
    nc = await connect(settings.nats_url, "fleet-api", link=settings.nats_link(GATEWAY_INBOX))
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.streams, replicas=settings.nats_stream_replicas)
        replicas = settings.nats_stream_replicas
        await ensure_bucket(
            js,
            MATERIALS_BUCKET,
            description="the material library, by sha256",
            replicas=replicas,
        )
        await ensure_bucket(
            js,
            ARTIFACTS_BUCKET,
            max_age_seconds=settings.artifact_retention_hours * 3600,
            description="screenshots and UI dumps of failed steps",
            replicas=replicas,
        )
        keys: Mirror[KeyRecord] = Mirror(KV_API_KEYS, parse_record)
        scripts: Mirror[ScriptSpec] = Mirror(KV_SCRIPTS, parse_spec)
        kv_config = settings.kv_config
        await keys.start(await open_bucket(js, KV_API_KEYS, kv_config(KV_API_KEYS)))
        await scripts.start(await open_bucket(js, KV_SCRIPTS, kv_config(KV_SCRIPTS)))
        await asyncio.wait_for(keys.loaded.wait(), _LOAD_TIMEOUT_SECONDS)
        await asyncio.wait_for(scripts.loaded.wait(), _LOAD_TIMEOUT_SECONDS)
    except BaseException:
        await nc.close()
        raise
    gw = Gateway(settings=settings, nc=nc, js=js, keys=keys, scripts=scripts)
    await gw.presence.start(nc)
    problem = start_problem(settings, keys.entries)
    if problem:
        await close_gateway(gw)
        raise StartRefused(problem)
    return gw


async def close_gateway(gw: Gateway) -> None:
    await gw.presence.stop()
    await gw.keys.stop()
    await gw.scripts.stop()
    with contextlib.suppress(Exception):
        await gw.nc.close()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.state.settings
    gw = await open_gateway(settings)
    if not gw.keys.entries:
        log.warning(
            "keys.none",
            message=f"no API keys are configured: open access, serving loopback "
            f"{settings.api_host} only; create one with `python -m fleet_api keys create`",
        )
    log.info(
        "api.ready",
        host=settings.api_host,
        port=settings.api_port,
        keys=len(gw.keys.entries),
        plugins=sorted(gw.scripts.entries),
    )
    app.state.gateway = gw
    try:
        yield
    finally:
        await close_gateway(gw)
        log.info("api.stopped")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    # Swagger UI and ReDoc from the assets in the fastapi-offline wheel, not a CDN:
    # /docs must render on a host with no internet.
    app = FastAPIOffline(
        title="Fleet task API (TikMatrix-compatible)",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics are Prometheus (fleet_api.metrics), not OpenTelemetry: FastAPI's native
        # telemetry would only ask OpenTelemetry for a provider on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    if settings.metrics_enabled:
        metrics.install(app)
    api = APIRouter(prefix="/api/v1")
    api.include_router(tasks.router)
    api.include_router(artifacts.router)
    api.include_router(materials.router)
    api.include_router(fleet.router)
    api.include_router(events.router)
    api.include_router(heartbeats.router)
    api.include_router(keys.router)
    api.include_router(rpc.router)
    api.include_router(custom_scripts.router)
    api.include_router(scheduling.router)
    app.include_router(system.router)
    app.include_router(api)
    app.include_router(system.probes)
    errors.install(app)
    docs.install(app)
    console.install(app)
    # Added before the correlation layer, so they run inside it (their refusals get an
    # id and a log line) and in front of routing, the key check and body parsing. The
    # library upload streams to the object store under its own limit.
    app.add_middleware(
        BodySizeMiddleware,
        limit=settings.api_max_body_bytes,
        streamed=frozenset({("POST", "/api/v1/material")}),
    )
    app.add_middleware(SameOriginMiddleware)
    app.add_middleware(CorrelationMiddleware)
    return app
