"""The live stream under pressure: a reader that stops reading is cut off after the
send timeout while 100 others keep receiving every event, and one caller cannot hold
more than its cap of streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable

import httpx
from nats.aio.client import Client

from .conftest import Served, poll_until
from .test_api_events import publish

FLOWING = 100
WAVE = 20


async def follow(client: httpx.AsyncClient, got: list[int], opened: asyncio.Event) -> None:
    """Collect the `seq` of every event on task 2 until the stream ends."""
    async with client.stream("GET", "/api/v1/events", params={"task_id": 2}) as r:
        assert r.status_code == 200
        opened.set()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                got.append(json.loads(line[5:])["data"]["seq"])


async def stream_status(client: httpx.AsyncClient) -> int:
    async with client.stream("GET", "/api/v1/events", params={"task_id": 3}) as r:
        return r.status_code


async def test_a_stalled_reader_is_cut_off_while_100_others_flow(
    serve: Callable[..., Awaitable[Served]], bus: Client
) -> None:
    # Room for the 100 readers, the stalled one, and nothing more.
    api = await serve(api_sse_send_timeout_seconds=1.0, api_sse_max_streams_per_caller=FLOWING + 1)
    client = httpx.AsyncClient(
        base_url=api.url, timeout=30, limits=httpx.Limits(max_connections=FLOWING + 10)
    )
    got: list[list[int]] = [[] for _ in range(FLOWING)]
    opened = [asyncio.Event() for _ in range(FLOWING)]
    readers: list[asyncio.Task[None]] = []
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        # Opened in waves: each stream creates a consumer through JetStream's API, and a
        # hundred at once on a loaded CI machine had 45 of them time out (503) after 5 s.
        for wave in range(0, FLOWING, WAVE):
            for i in range(wave, wave + WAVE):
                readers.append(asyncio.create_task(follow(client, got[i], opened[i])))
            await asyncio.wait_for(
                asyncio.gather(*(e.wait() for e in opened[wave : wave + WAVE])), 20
            )
        await loop.sock_connect(stalled, (api.settings.api_host, api.settings.api_port))
        await loop.sock_sendall(
            stalled, b"GET /api/v1/events?task_id=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        # Its answer's head first (then it stops reading): a probe sent before the stalled
        # stream had its slot would take that slot itself and leave the stalled one a 429.
        head = b""
        async with asyncio.timeout(20):
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(stalled, 1024)
                assert chunk, f"the stalled stream was closed: {head!r}"
                head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        # The cap is reached: the stalled stream holds the last slot.
        await poll_until(
            lambda: _status_is(client, 429), what="the stalled stream to take the last slot"
        )
        seq = 0
        blob = "x" * 256 * 1024
        cut = False
        # Flood the stalled reader's task with big events (its socket fills within a few
        # MB) while the others' task gets small ones, until the stalled one is dropped -
        # seen as its slot coming free.
        for _ in range(200):
            await publish(bus, "task-1", "task.progressed", task_id=1, blob=blob)
            seq += 1
            await publish(bus, "task-2", "task.progressed", task_id=2, seq=seq)
            if await _status_is(client, 200):
                cut = True
                break
        assert cut, "the stalled reader was never cut off"
        for _ in range(5):  # and the others still flow afterwards
            seq += 1
            await publish(bus, "task-2", "task.progressed", task_id=2, seq=seq)
        await poll_until(
            lambda: all(len(g) == seq for g in got), within=20, what="every reader's events"
        )
        assert all(g == list(range(1, seq + 1)) for g in got)
        # The stalled client, reading at last, gets what was buffered and then the end.
        async with asyncio.timeout(20):
            while await loop.sock_recv(stalled, 1 << 20):
                pass
    finally:
        stalled.close()
        for task in readers:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*readers, return_exceptions=True)
        await client.aclose()


async def _status_is(client: httpx.AsyncClient, status: int) -> bool:
    return await stream_status(client) == status


async def test_one_caller_may_hold_only_its_cap_of_streams(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    api = await serve(api_sse_max_streams_per_caller=2)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            r = await stack.enter_async_context(api.client.stream("GET", "/api/v1/events"))
            assert r.status_code == 200
        r = await api.client.get("/api/v1/events")
        assert r.status_code == 429
        assert r.json()["code"] == 42901
        assert "FLEET_API_SSE_MAX_STREAMS_PER_CALLER" in r.json()["message"]
    # Closed streams give their slots back.
    await poll_until(lambda: _status_is(api.client, 200), what="the slots to come back")
