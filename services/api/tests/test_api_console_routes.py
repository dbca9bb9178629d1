"""What the console and the `fleet` CLI need from the gateway, without a browser: key
management over REST (admin keys only), `whoami`, the heartbeat stream, the console's
page shells and assets, and Swagger UI served from the package instead of a CDN."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue

from fleet_api.keys import create_key
from fleet_contracts.agent import DeviceStatus, Heartbeat
from fleet_contracts.codes import Plan, Role
from fleet_contracts.subjects import heartbeat_subject

from .conftest import Served, poll_until

ServeFn = Callable[..., Awaitable[Served]]


async def test_the_first_key_is_made_on_an_open_gateway_and_then_keys_are_required(
    api: Served,
) -> None:
    r = await api.client.get("/api/v1/whoami")
    assert r.json()["data"] == {
        "actor": "local",
        "role": "admin",
        "plan_name": "local",
        "keys_required": False,
    }
    r = await api.client.post("/api/v1/keys", json={"name": "ops", "role": "admin"})
    assert r.status_code == 200, r.text
    created = r.json()["data"]
    secret = created["key"]
    assert secret.startswith("fk_") and created["role"] == "admin" and created["plan"] == "pro"

    async def locked() -> bool:
        return (await api.client.get("/api/v1/task/stats")).status_code == 401

    await poll_until(locked, what="the gateway to require the new key")
    admin = {"X-API-Key": secret}
    r = await api.client.get("/api/v1/whoami", headers=admin)
    assert r.json()["data"]["actor"] == "ops" and r.json()["data"]["keys_required"] is True
    r = await api.client.get("/api/v1/keys", headers=admin)
    (listed,) = r.json()["data"]
    assert listed["name"] == "ops" and "key" not in listed
    assert listed["fingerprint"] == created["fingerprint"]


async def test_only_admin_keys_manage_keys_and_bad_input_names_the_field(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    admin = await create_key(keys_kv, "root", Plan.PRO, Role.ADMIN)
    operator = await create_key(keys_kv, "ops", Plan.PRO, Role.OPERATOR)
    api = await serve()
    as_admin = {"X-API-Key": admin}
    r = await api.client.get("/api/v1/keys", headers={"X-API-Key": operator})
    assert r.status_code == 403 and r.json()["code"] == 40302
    r = await api.client.post("/api/v1/keys", headers={"X-API-Key": operator}, json={"name": "x"})
    assert r.status_code == 403 and r.json()["code"] == 40302

    r = await api.client.post("/api/v1/keys", headers=as_admin, json={"name": "", "plan": "pro"})
    assert r.status_code == 400 and "name" in r.json()["message"]
    r = await api.client.post("/api/v1/keys", headers=as_admin, json={"name": "a", "role": "god"})
    assert r.status_code == 400 and "role" in r.json()["message"]
    r = await api.client.post("/api/v1/keys", headers=as_admin, json={"name": "ops"})
    assert r.status_code == 409 and "ops" in r.json()["message"]

    r = await api.client.delete("/api/v1/keys/ops", headers=as_admin)
    assert r.json()["data"] == {"name": "ops", "revoked_count": 1}

    async def refused() -> bool:
        r = await api.client.get("/api/v1/task/stats", headers={"X-API-Key": operator})
        return r.status_code == 401 and "revoked" in r.json()["message"]

    await poll_until(refused, what="the revoked key to be refused")
    r = await api.client.delete("/api/v1/keys/ops", headers=as_admin)
    assert r.status_code == 404 and r.json()["code"] == 40401


async def test_heartbeats_stream_as_server_sent_events(api: Served, bus: Client) -> None:
    beat = Heartbeat(
        agent_id="host-9",
        host="rack-9",
        devices=[DeviceStatus(serial="p1", busy=True, task_id=7, battery=55)],
    )
    received: list[dict[str, object]] = []

    async def publish_until_heard() -> None:
        while not received:
            await bus.publish(heartbeat_subject("host-9"), beat.to_bytes())
            await asyncio.sleep(0.05)

    async with asyncio.timeout(10):
        async with api.client.stream("GET", "/api/v1/heartbeats") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            sender = asyncio.create_task(publish_until_heard())
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                if line.startswith("data:"):
                    received.append(json.loads(line.split(":", 1)[1]))
                    break
            await sender
    assert event == "agent.heartbeat"
    assert received[0]["agent_id"] == "host-9" and received[0]["host"] == "rack-9"
    assert received[0]["devices"] == [
        {"serial": "p1", "busy": True, "task_id": 7, "battery": 55, "dispatch_id": None}
    ]


async def test_console_pages_and_assets_are_served_without_a_key(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    await create_key(keys_kv, "ops", Plan.PRO)
    api = await serve()
    home = await api.client.get("/")
    assert home.status_code == 200 and 'href="/console"' in home.text
    pages = ["/console", "/console/tasks?status=3&serial=a", "/console/tasks/5"]
    pages += ["/console/devices", "/console/devices/x%3Cy", "/console/events?type=task."]
    for path in pages:
        r = await api.client.get(path)
        assert r.status_code == 200, path
        assert "/console/static/console.js" in r.text
    # The serial is escaped into the page, never run as markup.
    assert 'data-serial="x&lt;y"' in (await api.client.get("/console/devices/x%3Cy")).text
    tasks = await api.client.get("/console/tasks?status=3&serial=a")
    assert '<option value="3" selected>' in tasks.text and 'value="a"' in tasks.text
    for asset in ("console.js", "console.css"):
        assert (await api.client.get(f"/console/static/{asset}")).status_code == 200
    # The page shells hold no data: that still needs the key.
    assert (await api.client.get("/api/v1/task/stats")).status_code == 401


async def test_docs_load_swagger_ui_from_the_gateway_not_a_cdn(api: Served) -> None:
    docs = (await api.client.get("/docs")).text
    assert "cdn." not in docs and "https://" not in docs
    for url in ("/static-offline-docs/swagger-ui-bundle.js", "/static-offline-docs/swagger-ui.css"):
        assert url in docs
        r = await api.client.get(url)
        assert r.status_code == 200 and len(r.content) > 10_000
