"""No scheduler, or no NATS: a quick 503 in the envelope, never a hang; plus the
correlation id on every response and the 500 that hides a traceback."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_api.app import create_app
from fleet_contracts.commands import Reply
from fleet_contracts.queries import QUERY_SUBJECTS, GetStats
from fleet_contracts.subjects import SCHEDULER_QUEUE
from fleet_devstack import EmbeddedNats

from .conftest import Served, ServedApp, make_settings, poll_until

ENDPOINTS = [
    ("GET", "/api/v1/task", None),
    ("GET", "/api/v1/task/1", None),
    ("GET", "/api/v1/task/stats", None),
    ("GET", "/api/v1/task/1/events", None),
    ("GET", "/api/v1/device", None),
    ("GET", "/api/v1/account", None),
    ("POST", "/api/v1/task", {"serials": ["s1"], "script_name": "post"}),
    ("POST", "/api/v1/task/1/stop", None),
    ("POST", "/api/v1/task/1/retry", None),
    ("POST", "/api/v1/task/retry-all", None),
    ("DELETE", "/api/v1/task/1", None),
    ("DELETE", "/api/v1/task/batch", {"task_ids": [1]}),
    ("POST", "/api/v1/account", {"username": "u", "serial": "s1"}),
    ("DELETE", "/api/v1/account/u", None),
]


SLOW = {"api_query_timeout_seconds": 30.0}
"""A query timeout far past the bound below: an answer that waited for it cannot pass
for one given at once, however slow the machine running the suite is meanwhile. (A
command without a key asks with the fixed 1 s ping, whose timeout says so in its
message; one with a key waits for the command timeout by design, and is not timed.)"""
AT_ONCE = 10.0


async def test_without_a_scheduler_every_endpoint_answers_503_at_once(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    api = await serve(**SLOW)
    for method, path, body in ENDPOINTS:
        started = time.monotonic()
        r = await api.client.request(method, path, json=body)
        assert r.status_code == 503, (method, path, r.text)
        assert r.json()["code"] == 50301
        assert "no scheduler is running" in r.json()["message"]
        assert time.monotonic() - started < AT_ONCE
    r = await api.client.post(
        "/api/v1/task",
        json={"serials": ["s1"], "script_name": "post"},
        headers={"Idempotency-Key": "k1"},
    )
    assert r.status_code == 503
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["code"] == 50301
    assert (await api.client.get("/healthz")).json()["data"] == {"status": "ok"}


async def test_with_nats_down_the_gateway_answers_503_quickly_then_recovers(
    serve: Callable[..., Awaitable[Served]], nats_server: EmbeddedNats
) -> None:
    api = await serve(**SLOW)
    nats_server.stop()

    async def noticed() -> bool:
        # Until its client has seen the connection drop, a request still goes out and
        # waits for its timeout: what is timed below is the answer once NATS is known down.
        r = await api.client.get("/readyz")
        return r.status_code == 503 and "NATS" in r.json()["message"]

    await poll_until(noticed, within=10, what="the gateway to notice NATS is down")
    for method, path, body in [*ENDPOINTS, ("GET", "/api/v1/events", None)]:
        started = time.monotonic()
        r = await api.client.request(method, path, json=body)
        assert r.status_code == 503, (method, path, r.text)
        assert "NATS" in r.json()["message"]
        assert time.monotonic() - started < AT_ONCE
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert (await api.client.get("/healthz")).status_code == 200
    nats_server.start()

    async def reconnected() -> bool:
        r = await api.client.get("/api/v1/task")
        return "no scheduler is running" in r.json()["message"]

    await poll_until(reconnected, within=15, what="the gateway to reconnect to NATS")


async def test_every_response_carries_the_correlation_id(api: Served) -> None:
    r = await api.client.get("/api/v1/license/check", headers={"X-Correlation-Id": "abc-123"})
    assert r.headers["x-correlation-id"] == "abc-123"
    r = await api.client.get("/nowhere", headers={"X-Request-Id": "req-9"})
    assert r.headers["x-correlation-id"] == "req-9"
    r = await api.client.get("/api/v1/task")
    assert len(r.headers["x-correlation-id"]) == 32
    # Junk is not echoed: a fresh id replaces it.
    r = await api.client.get("/healthz", headers={"X-Correlation-Id": "a b\tc"})
    assert r.headers["x-correlation-id"] != "a b\tc"


async def test_an_unexpected_error_is_a_500_envelope_with_the_correlation_id(
    nats_url: str,
) -> None:
    import httpx

    settings = make_settings(nats_url)
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", broken)
    served = ServedApp(settings, app)
    await served.start()
    try:
        url = f"http://{settings.api_host}:{settings.api_port}"
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.get("/boom", headers={"X-Correlation-Id": "cid-500"})
    finally:
        await served.stop()
    assert r.status_code == 500
    assert r.json() == {
        "code": 50001,
        "message": "internal error; quote correlation id cid-500 to the operator",
        "data": None,
    }
    assert "secret internals" not in r.text
    assert r.headers["x-correlation-id"] == "cid-500"


async def test_a_query_swallowed_by_a_dead_scheduler_is_answered_by_another(
    serve: Callable[..., Awaitable[Served]], bus: Client
) -> None:
    # The first scheduler to take the query dies holding it; the hedge reaches another
    # one, long before the 30 s query timeout.
    calls: list[str] = []
    stats = {"total": 3, "pending": 1, "running": 1, "completed": 1, "failed": 0}

    async def scheduler(msg: Msg) -> None:
        calls.append("answered" if calls else "swallowed")
        if len(calls) > 1:
            await msg.respond(Reply(data=stats).model_dump_json().encode())

    await bus.subscribe(QUERY_SUBJECTS[GetStats], queue=SCHEDULER_QUEUE, cb=scheduler)
    await bus.flush()
    api = await serve(**SLOW, api_query_hedge_seconds=0.3)
    started = time.monotonic()
    r = await api.client.get("/api/v1/task/stats")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == stats
    assert time.monotonic() - started < AT_ONCE
    assert calls == ["swallowed", "answered"]
