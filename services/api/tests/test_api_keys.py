"""API keys and plans: who may call, with which header, and what each plan gets."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

import pytest
from nats.js.kv import KeyValue

from fleet_api.app import StartRefused, create_app
from fleet_api.keys import create_key
from fleet_contracts.codes import Plan

from .conftest import Served, make_settings, poll_until

ServeFn = Callable[..., Awaitable[Served]]


async def test_no_keys_on_loopback_is_open_access_and_says_so(api: Served) -> None:
    r = await api.client.get("/api/v1/license/check")
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["plan_name"] == "local"
    assert data["api_enabled"] is True
    assert "no API keys are configured" in data["message"]


async def test_a_pro_key_works_as_bearer_or_x_api_key_and_nothing_else_does(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    secret = await create_key(keys_kv, "ops", Plan.PRO)
    api = await serve()
    for headers in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}):
        r = await api.client.get("/api/v1/license/check", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"] == {
            "plan_name": "pro",
            "api_enabled": True,
            "device_limit": 20,
            "message": "plan pro includes API access",
        }
        # Past the key check: no scheduler runs, so the bus answers 503.
        r = await api.client.get("/api/v1/task", headers=headers)
        assert r.status_code == 503
    for headers in (
        {},
        {"X-API-Key": "fk_not-a-key"},
        {"Authorization": "Bearer fk_not-a-key"},
        {"Authorization": f"Basic {secret}"},
    ):
        for path in ("/api/v1/license/check", "/api/v1/task", "/api/v1/device"):
            r = await api.client.get(path, headers=headers)
            assert r.status_code == 401, (headers, path)
            assert r.json()["code"] == 40101
    r = await api.client.get("/api/v1/task")
    assert "Authorization: Bearer" in r.json()["message"]


async def test_starter_plan_gets_40301_everywhere_and_its_license_data(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    secret = await create_key(keys_kv, "cheap", Plan.STARTER)
    api = await serve()
    headers = {"X-API-Key": secret}
    r = await api.client.get("/api/v1/license/check", headers=headers)
    assert r.status_code == 403
    assert r.json()["code"] == 40301
    assert r.json()["data"]["plan_name"] == "starter"
    assert r.json()["data"]["api_enabled"] is False
    for method, path in [
        ("GET", "/api/v1/task"),
        ("POST", "/api/v1/task"),
        ("GET", "/api/v1/task/stats"),
        ("GET", "/api/v1/task/1"),
        ("POST", "/api/v1/task/1/stop"),
        ("POST", "/api/v1/task/retry-all"),
        ("GET", "/api/v1/device"),
        ("GET", "/api/v1/script"),
        ("GET", "/api/v1/events"),
    ]:
        r = await api.client.request(
            method,
            path,
            headers=headers,
            json={"serials": ["a"], "script_name": "post"} if method == "POST" else None,
        )
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == 40301


async def test_a_revoked_key_stops_working_without_a_restart(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    from fleet_api.keys import revoke_keys

    secret = await create_key(keys_kv, "temp", Plan.TEAM)
    await create_key(keys_kv, "other", Plan.BUSINESS)
    api = await serve()
    headers = {"Authorization": f"Bearer {secret}"}
    r = await api.client.get("/api/v1/license/check", headers=headers)
    assert r.json()["data"]["plan_name"] == "team"
    assert await revoke_keys(keys_kv, "temp") == 1

    async def refused() -> bool:
        r = await api.client.get("/api/v1/license/check", headers=headers)
        return r.status_code == 401

    await poll_until(refused, what="the revoked key to be refused")
    r = await api.client.get("/api/v1/license/check", headers=headers)
    assert r.json()["message"] == "API key 'temp' has been revoked"


async def test_a_key_created_while_running_ends_open_access(api: Served, keys_kv: KeyValue) -> None:
    assert (await api.client.get("/api/v1/license/check")).status_code == 200
    secret = await create_key(keys_kv, "first", Plan.PRO)

    async def closed() -> bool:
        return (await api.client.get("/api/v1/license/check")).status_code == 401

    await poll_until(closed, what="keys to be required")
    r = await api.client.get("/api/v1/license/check", headers={"X-API-Key": secret})
    assert r.status_code == 200


async def test_revoking_the_last_key_does_not_reopen_access(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    from fleet_api.keys import revoke_keys

    await create_key(keys_kv, "only", Plan.PRO)
    await revoke_keys(keys_kv, "only")
    api = await serve()
    assert (await api.client.get("/api/v1/license/check")).status_code == 401


@pytest.mark.parametrize(
    "overrides",
    [{"api_host": "0.0.0.0"}, {"api_require_keys": "true"}],
)
async def test_refuses_to_start_where_keys_are_required_and_none_exist(
    nats_url: str, overrides: dict[str, object]
) -> None:
    app = create_app(make_settings(nats_url, **overrides))
    with pytest.raises(StartRefused, match="API keys are required there and none exist"):
        async with app.router.lifespan_context(app):
            pass


async def test_the_cli_creates_lists_and_revokes_keys(serve: ServeFn, nats_url: str) -> None:
    env = {**os.environ, "FLEET_NATS_URL": nats_url, "FLEET_LOG_FORMAT": "json"}

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleet_api",
            "keys",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, _ = await cli("create", "--name", "alice", "--plan", "business")
    assert code == 0
    secret = out.strip()
    assert secret.startswith("fk_")
    code, _, err = await cli("create", "--name", "alice", "--plan", "pro")
    assert code == 2
    assert "exists already" in err
    code, out, _ = await cli("list")
    assert "alice" in out and "business" in out and "active" in out
    assert secret not in out
    api = await serve()
    r = await api.client.get("/api/v1/license/check", headers={"X-API-Key": secret})
    assert r.json()["data"]["plan_name"] == "business"
    code, out, _ = await cli("revoke", "alice")
    assert code == 0
    code, out, _ = await cli("list")
    assert "revoked" in out

    async def refused() -> bool:
        r = await api.client.get("/api/v1/license/check", headers={"X-API-Key": secret})
        return r.status_code == 401

    await poll_until(refused, what="the CLI's revoke to take effect")


async def test_a_viewer_key_reads_but_cannot_act_and_old_keys_are_operators(
    serve: ServeFn, keys_kv: KeyValue
) -> None:
    from fleet_contracts.codes import Role

    viewer = await create_key(keys_kv, "watcher", Plan.PRO, Role.VIEWER)
    operator = await create_key(keys_kv, "ops", Plan.PRO)
    # A record written before keys had a role: it keeps the use it had.
    legacy = "fk_legacy-secret"
    from fleet_api.keys import hash_secret

    await keys_kv.create(hash_secret(legacy), b'{"name": "old", "plan": "team"}')
    api = await serve()

    async def answer(secret: str, method: str, path: str) -> tuple[int, int]:
        r = await api.client.request(method, path, headers={"X-API-Key": secret})
        return r.status_code, r.json()["code"]

    # Reads pass the key check (and reach the bus: no scheduler runs here, so 503).
    assert await answer(viewer, "GET", "/api/v1/task") == (503, 50301)
    for method, path in [
        ("POST", "/api/v1/task/retry-all"),
        ("POST", "/api/v1/task/1/stop"),
        ("DELETE", "/api/v1/task/1"),
    ]:
        status, code = await answer(viewer, method, path)
        assert (status, code) == (403, 40302), (method, path)
        r = await api.client.request(method, path, headers={"X-API-Key": viewer})
        assert "role operator" in r.json()["message"]
        assert "'watcher' has role viewer" in r.json()["message"]
        for secret in (operator, legacy):
            assert await answer(secret, method, path) == (503, 50301), (method, path)


async def test_admin_routes_need_an_admin_key() -> None:
    from starlette.requests import Request

    from fleet_api.auth import Caller, admin_caller
    from fleet_api.errors import ApiError
    from fleet_contracts.codes import Role
    from fleet_contracts.rest import LicenseInfo

    request = Request({"type": "http", "method": "POST", "path": "/api/v1/keys", "headers": []})
    license = LicenseInfo(plan_name="pro", api_enabled=True, device_limit=20, message="")
    for role in (Role.VIEWER, Role.OPERATOR):
        with pytest.raises(ApiError) as refused:
            admin_caller(request, Caller(actor="k", license=license, role=role))
        assert refused.value.code == 40302
        assert "role admin" in refused.value.message
    admin = Caller(actor="k", license=license, role=Role.ADMIN)
    assert admin_caller(request, admin) is admin
