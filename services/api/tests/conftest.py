"""Fixtures for the gateway's tests: the app served by a real uvicorn on a free port
(so SSE streams for real), talking to the per-test NATS server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client
from nats.js.kv import KeyValue

from fleet_api.app import create_app
from fleet_api.keys import create_key
from fleet_api.kv import open_bucket
from fleet_api.settings import ApiSettings
from fleet_contracts.codes import Plan
from fleet_contracts.subjects import KV_API_KEYS
from fleet_devstack.servers import free_port
from fleet_runtime.bus import connect, ensure_streams
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings


async def poll_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float = 10.0,
    what: str = "condition",
) -> None:
    """Wait for `check` to hold, up to `within` seconds, else fail naming `what`."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Served:
    url: str
    client: httpx.AsyncClient
    settings: ApiSettings


class ServedApp:
    """A uvicorn server for one app, in this event loop."""

    def __init__(self, settings: ApiSettings, app: FastAPI | None = None) -> None:
        self.settings = settings
        config = uvicorn.Config(
            app or create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        await poll_until(
            lambda: self.server.started or self.task is None or self.task.done(),
            what="uvicorn to start",
        )
        if not self.server.started:
            raise RuntimeError("the gateway did not start")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)


def make_settings(nats_url: str, **overrides: object) -> ApiSettings:
    values: dict[str, object] = {
        "nats_url": nats_url,
        "api_host": "127.0.0.1",
        "api_port": free_port(),
        "api_command_timeout_seconds": 3.0,
        "api_query_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return ApiSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Client]:
    nc = await connect(nats_url, "test")
    await ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture
async def keys_kv(bus: Client) -> KeyValue:
    return await open_bucket(bus.jetstream(), KV_API_KEYS)


@pytest.fixture
async def serve(nats_url: str) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Start gateways with the given setting overrides; all stopped after the test."""
    started: list[tuple[ServedApp, httpx.AsyncClient]] = []

    async def start(**overrides: object) -> Served:
        settings = make_settings(nats_url, **overrides)
        served = ServedApp(settings)
        await served.start()
        url = f"http://{settings.api_host}:{settings.api_port}"
        client = httpx.AsyncClient(base_url=url, timeout=30)
        started.append((served, client))
        return Served(url=url, client=client, settings=settings)

    yield start
    for served, client in reversed(started):
        await client.aclose()
        await served.stop()


@pytest.fixture
async def api(serve: Callable[..., Awaitable[Served]]) -> Served:
    """A gateway on loopback with no keys (open access) and no scheduler."""
    return await serve()


async def new_key(kv: KeyValue, name: str, plan: Plan) -> str:
    return await create_key(kv, name, plan)


@pytest.fixture
async def api_and_db(
    serve: Callable[..., Awaitable[Served]], nats_url: str, pg_dsn: str
) -> AsyncIterator[tuple[Served, asyncpg.Connection]]:
    """A keyless gateway and a real scheduler (no agent), with a connection to the
    scheduler's database for seeding read models."""
    async with Scheduler(SchedulerSettings(nats_url=nats_url, database_url=pg_dsn)):
        api = await serve()
        conn = await asyncpg.connect(pg_dsn)
        try:
            yield api, conn
        finally:
            await conn.close()


async def add_devices(conn: asyncpg.Connection, count: int) -> list[str]:
    """Phones as the device projection records them (one agent announcing them all
    would only make the test slower, not different)."""
    serials = [f"phone-{n:05d}" for n in range(count)]
    await conn.executemany(
        "INSERT INTO devices (serial, agent_id, host, model, online) VALUES ($1, 'h1', 'h1',"
        " 'Pixel 7 Pro (a long enough model name to make rows realistic)', $2)",
        [(s, n % 3 != 0) for n, s in enumerate(serials)],
    )
    return serials
