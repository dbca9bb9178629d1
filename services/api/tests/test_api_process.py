"""`python -m fleet_api` as an operator runs it: serves, stops cleanly on SIGTERM, and
refuses a public bind without keys."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx

from fleet_devstack.servers import free_port

from .conftest import poll_until


async def start(nats_url: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet_api",
        env={**os.environ, "FLEET_NATS_URL": nats_url, "FLEET_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_serves_and_stops_cleanly_on_sigterm(nats_url: str) -> None:
    port = free_port()
    proc = await start(nats_url, FLEET_API_PORT=str(port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await poll_until(healthy, within=20, what="the gateway process to serve")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"no API keys are configured" in err


async def test_refuses_a_public_bind_without_keys(nats_url: str) -> None:
    proc = await start(nats_url, FLEET_API_HOST="0.0.0.0", FLEET_API_PORT=str(free_port()))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "refusing to serve on 0.0.0.0: API keys are required there" in err.decode()
