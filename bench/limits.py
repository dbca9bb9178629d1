"""The raw limits of this machine, measured in the same run as the product figures.

A figure like "4,000 commands/s" means little alone; beside "JetStream takes 60,000
publishes/s and Postgres 90,000 batched rows/s here" it says how much of the machine the
product uses. Each function returns a rate per second.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aiohttp
import asyncpg
import nats

from fleet_devstack import free_port


async def jetstream_publish_rate(nats_url: str, n: int = 20_000, size: int = 512) -> float:
    """Acknowledged JetStream publishes per second, pipelined with `publish_async`."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=4000)
    stream = f"RAW{os.getpid()}"
    await js.add_stream(name=stream, subjects=[f"raw{os.getpid()}.>"])
    payload = b"x" * size
    start = time.perf_counter()
    for i in range(n):
        await js.publish_async(
            f"raw{os.getpid()}.{i % 100}", payload, headers={"Nats-Msg-Id": str(i)}
        )
    await js.publish_async_completed()
    elapsed = time.perf_counter() - start
    await js.delete_stream(stream)
    await nc.close()
    return n / elapsed


async def pg_insert_rate(dsn: str, n: int = 50_000, batch: int = 100) -> float:
    """Rows per second into an events-shaped table, `batch` rows per transaction."""
    conn = await asyncpg.connect(dsn)
    table = f"raw_insert_{os.getpid()}"
    await conn.execute(
        f"CREATE TABLE {table} (position bigserial PRIMARY KEY, stream_id text NOT NULL,"
        " version int NOT NULL, type text NOT NULL, data jsonb NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT now(), UNIQUE (stream_id, version))"
    )
    data = json.dumps({"task_id": 1, "serial": "device_serial_1", "script_name": "post"})
    start = time.perf_counter()
    for first in range(0, n, batch):
        rows = [(f"task-{i}", 1, "task.created", data) for i in range(first, first + batch)]
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {table} (stream_id, version, type, data)"
                " VALUES ($1, $2, $3, $4::jsonb)",
                rows,
            )
    elapsed = time.perf_counter() - start
    await conn.execute(f"DROP TABLE {table}")
    await conn.close()
    return n / elapsed


TRIVIAL_APP = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/ping")
async def ping():
    return {"code": 0, "message": "success", "data": None}
"""


async def hammer(
    client: aiohttp.ClientSession, url: str, n: int, concurrency: int = 32
) -> list[float]:
    """GET `url` n times with `concurrency` in flight; return each latency in seconds.

    aiohttp, not httpx: on two cores httpx itself tops out near 600 requests/s and
    would measure the client, not the server.
    """
    latencies: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            t0 = time.perf_counter()
            async with client.get(url) as resp:
                await resp.read()
                resp.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def uvicorn_trivial_rate(n: int = 5_000, concurrency: int = 32) -> float:
    """Requests per second uvicorn + FastAPI serve on a do-nothing endpoint, one worker,
    with the same client the product benchmarks use."""
    port = free_port()
    code = TRIVIAL_APP + f"\nimport uvicorn\nuvicorn.run(app, port={port}, log_level='warning')"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    try:
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{port}/ping"
            for _ in range(200):
                try:
                    async with client.get(url) as resp:
                        await resp.read()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            start = time.perf_counter()
            await hammer(client, url, n, concurrency)
            return n / (time.perf_counter() - start)
    finally:
        proc.terminate()
        await proc.wait()
