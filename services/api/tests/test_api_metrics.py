"""The gateway's /metrics: requests counted and timed by route template and status,
never by raw path; no key needed; off when the settings say so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.js.kv import KeyValue

from fleet_api import metrics
from fleet_contracts.codes import Plan
from tests.scrape import grew, moved, parse

from .conftest import Served, new_key


async def test_requests_are_counted_by_route_template_and_status(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    api = await serve()
    before = parse((await api.client.get("/metrics")).text)
    for task_id in (11, 12, 13):
        # No scheduler runs: each answers 503, as fast as NATS says "no responders".
        assert (await api.client.get(f"/api/v1/task/{task_id}")).status_code == 503
    assert (await api.client.get("/healthz")).status_code == 200
    assert (await api.client.get("/no/such/path")).status_code == 404
    resp = await api.client.get("/metrics")
    assert resp.status_code == 200
    after = parse(resp.text)

    requests = "fleet_api_http_requests_total"
    # The get-task route's template, as the app declares it (a path convertor may follow
    # the parameter's name): one label for the three ids, never the paths asked for.
    [task] = {
        h
        for h in (dict(labels).get("handler", "") for _, labels in after)
        if h.startswith("/api/v1/task/{task_id") and h.endswith("}")
    }
    assert grew(before, after, requests, handler=task, method="GET", status="503") == 3
    assert grew(before, after, requests, handler="/healthz", method="GET", status="200") == 1
    assert grew(before, after, requests, handler="none", method="GET", status="404") == 1
    assert moved(before, after, requests) == 5, "/metrics itself is not counted"
    latency = "fleet_api_http_request_duration_seconds_count"
    assert grew(before, after, latency, handler=task, method="GET", status="503") == 3
    handlers = {dict(labels).get("handler") for _, labels in after}
    assert not any(h and h.endswith(("/11", "/12", "/13")) for h in handlers)
    assert after.has("fleet_nats_reconnects_total")


async def test_metrics_need_no_key_where_keys_are_required(
    serve: Callable[..., Awaitable[Served]], keys_kv: KeyValue
) -> None:
    await new_key(keys_kv, "ops", Plan.PRO)
    api = await serve(api_require_keys="true")
    assert (await api.client.get("/api/v1/task/stats")).status_code == 401
    assert (await api.client.get("/metrics")).status_code == 200


async def test_switched_off_there_is_no_metrics_route(
    serve: Callable[..., Awaitable[Served]],
) -> None:
    api = await serve(metrics_enabled=False)
    assert (await api.client.get("/metrics")).status_code == 404
    assert "/metrics" not in (await api.client.get("/openapi.json")).text


def test_exported_names() -> None:
    names = metrics.exported()
    assert {"fleet_api_http_requests_total", "fleet_api_http_request_duration_seconds_bucket"} <= (
        names
    )
