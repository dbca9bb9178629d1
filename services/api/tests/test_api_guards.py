"""The gateway's front door: the body size limit (413 before anything is parsed, the
body left unread), the Host check against DNS rebinding and the Origin check against
cross-site requests on a keyless gateway, and the full `Allow` list on a 405."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from nats.js.kv import KeyValue
from starlette.datastructures import Headers

from fleet_api.sameorigin import refusal
from fleet_api.settings import ApiSettings
from fleet_contracts.codes import Plan

from .conftest import Served, new_key

LIMIT = 64 * 1024


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def test_an_announced_100_mb_body_is_refused_before_a_byte_is_read(
    serve: Callable[..., Awaitable[Served]], keys_kv: KeyValue
) -> None:
    await new_key(keys_kv, "ops", Plan.PRO)
    api = await serve(api_max_body_bytes=LIMIT)
    reader, writer = await asyncio.open_connection(api.settings.api_host, api.settings.api_port)
    # Anonymous, to a route that parses JSON and checks the key: only the head is sent.
    writer.write(
        b"POST /api/v1/task HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(5):
        status, body = await read_response(reader)
        # The gateway hung up rather than wait for (and drain) the 100 MB.
        assert await reader.read() == b""
    writer.close()
    assert status == 413
    assert b'"code":41301' in body.replace(b" ", b"")
    assert b"FLEET_API_MAX_BODY_BYTES" in body


async def test_a_chunked_body_is_cut_at_the_limit_with_memory_flat(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    api = await serve(api_max_body_bytes=LIMIT)
    reader, writer = await asyncio.open_connection(api.settings.api_host, api.settings.api_port)
    writer.write(
        b"POST /api/v1/task HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b'"' * (64 * 1024))
    sent = 0
    tracemalloc.start()
    try:
        response = asyncio.create_task(read_response(reader))
        # Offer up to 100 MB; stop as soon as the gateway has answered or hung up.
        while sent < 100 * 1024 * 1024 and not response.done():
            try:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 0.5)
            except (ConnectionError, TimeoutError):
                break
            sent += len(chunk)
        async with asyncio.timeout(5):
            status, body = await response
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.close()
    assert status == 413, body
    assert b"41301" in body
    # The gateway stopped reading near the limit: what was taken in is the limit plus
    # the sockets' buffers, nowhere near the 100 MB offered, and memory stayed flat.
    assert sent < 32 * 1024 * 1024
    assert peak < 16 * 1024 * 1024


async def test_a_body_under_the_limit_is_still_served(api: Served) -> None:
    r = await api.client.post("/api/v1/task", json={"script_name": "post"})
    assert r.status_code == 400  # parsed and checked: the limit is not in the way
    assert r.json()["code"] == 40001


async def test_a_dns_rebound_host_is_refused_on_a_keyless_gateway(api: Served) -> None:
    r = await api.client.post("/api/v1/task/retry-all", headers={"Host": "evil.example:50809"})
    assert r.status_code == 400
    assert r.json()["code"] == 40001
    assert "Host: 'evil.example:50809'" in r.json()["message"]
    r = await api.client.get("/api/v1/task/stats", headers={"Host": "evil.example"})
    assert r.status_code == 400
    # Loopback names pass (no scheduler here, so the request goes on to a 503).
    for host in ("localhost:50809", "127.0.0.1", "[::1]:50809"):
        r = await api.client.get("/api/v1/task/stats", headers={"Host": host})
        assert r.status_code == 503, (host, r.text)


async def test_configured_host_names_are_answered(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    api = await serve(api_allowed_hosts="fleet.lan, Ops.Example")
    r = await api.client.get("/api/v1/task/stats", headers={"Host": "ops.example:50809"})
    assert r.status_code == 503
    r = await api.client.get("/api/v1/task/stats", headers={"Host": "other.example"})
    assert r.status_code == 400


async def test_a_cross_site_post_is_refused_and_curl_is_not(api: Served) -> None:
    for path in ("/api/v1/task/retry-all", "/api/v1/task/7/stop", "/api/v1/task/7/retry"):
        r = await api.client.post(path, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403, path
        assert r.json()["code"] == 40305
        assert "evil.example" in r.json()["message"]
    r = await api.client.delete("/api/v1/task/7", headers={"Origin": "null"})
    assert r.status_code == 403
    r = await api.client.post("/api/v1/task/7/stop", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # curl / TikMatrix (no Origin) and the gateway's own pages go through to the
    # scheduler (absent here: 503).
    assert (await api.client.post("/api/v1/task/7/stop")).status_code == 503
    own = f"http://127.0.0.1:{api.settings.api_port}"
    r = await api.client.post("/api/v1/task/7/stop", headers={"Origin": own})
    assert r.status_code == 503


@pytest.mark.parametrize(
    ("method", "headers", "keyless", "expected"),
    [
        ("GET", {"host": "evil.example"}, False, None),  # keys guard a keyed gateway
        ("GET", {"host": "evil.example"}, True, 40001),
        ("GET", {"host": "127.0.0.2:1"}, True, None),
        ("GET", {"host": "localhost", "origin": "https://evil.example"}, True, None),
        ("POST", {"host": "h:1", "origin": "http://h:1"}, False, None),
        ("POST", {"host": "h:1", "origin": "http://h:2"}, False, 40305),
        ("PUT", {"host": "localhost", "origin": "http://localhost:9"}, True, None),
    ],
)
def test_refusal_rules(
    method: str, headers: dict[str, str], keyless: bool, expected: int | None
) -> None:
    found = refusal(method, Headers(headers), ApiSettings(), keyless)
    assert (None if found is None else int(found[0])) == expected


async def test_a_405_lists_every_method_the_path_serves(api: Served) -> None:
    r = await api.client.put("/api/v1/task")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert r.json()["code"] == 40501
    assert "GET, POST" in r.json()["message"]
