"""TikMatrix's custom-script API end to end, the way its published client uses it:
plain HTTP to a real gateway, a real scheduler on PostgreSQL and a simulated agent on
the same NATS. Leases (lease, heartbeat, release, expiry, 409 / 403), calls on the
leased phone (deviceInfo, a screenshot larger than NATS's payload limit, the UI tree,
adb behind its switch), a task waiting out a lease, bad input, roles; then registered
custom scripts run as tasks (output in the log, exit codes, the timeout), each program
driving its phone back through the API with the session it was given."""

from __future__ import annotations

import io
import json
import struct
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue
from PIL import Image

from fleet_agent.app import Agent
from fleet_agent.settings import AgentSettings
from fleet_api.keys import create_key
from fleet_contracts.codes import Plan, Role
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Served, poll_until

ONE_MIB = 1024 * 1024


@dataclass
class Fleet:
    api: httpx.AsyncClient
    url: str


@pytest.fixture
async def fleet(
    serve: Callable[..., Awaitable[Served]], nats_url: str, pg_dsn: str
) -> AsyncIterator[Fleet]:
    """A gateway (loopback, no keys: its caller is admin), a scheduler, and an agent
    with four simulated phones whose custom scripts call this gateway back."""
    served = await serve()
    scheduler = Scheduler(
        SchedulerSettings(
            nats_url=nats_url, database_url=pg_dsn, scheduler_dispatch_poll_seconds=0.1
        )
    )
    agent = Agent(
        AgentSettings(
            nats_url=nats_url,
            agent_id="host-1",
            agent_driver="sim",
            agent_sim_devices=4,
            agent_sim_speed=0.01,
            agent_api_base=served.url,
        )
    )
    async with scheduler, agent:

        async def all_online() -> bool:
            r = await served.client.get("/api/v1/rpc/devices")
            return r.status_code == 200 and len(r.json()["data"]) == 4

        await poll_until(all_online, what="four simulated phones online")
        yield Fleet(api=served.client, url=served.url)


async def ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    r = await client.request(method, f"/api/v1{path}", **kwargs)
    assert r.status_code == 200 and r.json()["code"] == 0, (r.status_code, r.text)
    return r.json()["data"]


async def refused(
    client: httpx.AsyncClient, status: int, code: int, method: str, path: str, **kwargs: Any
) -> str:
    r = await client.request(method, f"/api/v1{path}", **kwargs)
    body = r.json()
    assert (r.status_code, body["code"]) == (status, code), (r.status_code, body)
    message: str = body["message"]
    return message


async def lease(client: httpx.AsyncClient, serial: str, ttl: int = 120) -> str:
    data = await ok(
        client, "POST", "/rpc/session", json={"serial": serial, "label": "test", "ttl_secs": ttl}
    )
    session_id: str = data["session_id"]
    return session_id


def rpc(serial: str, method: str, params: Any = None) -> dict[str, Any]:
    return {"serial": serial, "method": method, "params": params or [], "timeout": 10}


async def busy(client: httpx.AsyncClient) -> dict[str, bool]:
    devices = await ok(client, "GET", "/rpc/devices")
    return {d["serial"]: d["busy"] for d in devices}


async def task(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    data: dict[str, Any] = await ok(client, "GET", f"/task/{task_id}")
    return data


async def wait_status(client: httpx.AsyncClient, task_id: int, status: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await task(client, task_id))
        return found["status"] == status

    await poll_until(reached, within=30, what=f"task {task_id} to reach status {status}")
    return found


async def test_a_leased_phone_is_driven_only_with_its_session(
    fleet: Fleet, tmp_path: Path, bus: Client
) -> None:
    api = fleet.api
    assert await busy(api) == {f"device_serial_{n}": False for n in range(1, 5)}

    sid = await lease(api, "device_serial_1")
    message = await refused(
        api, 409, 40901, "POST", "/rpc/session", json={"serial": "device_serial_1"}
    )
    assert "already leased" in message
    assert (await busy(api))["device_serial_1"] is True
    [listed] = await ok(api, "GET", "/rpc/session")
    assert listed["serial"] == "device_serial_1" and sid not in json.dumps(listed)

    beat = await ok(api, "POST", f"/rpc/session/{sid}/heartbeat", json={"ttl_secs": 120})
    assert beat["ttl_secs"] == 120 and beat["expires_at"]

    headers = {"x-session-id": sid}
    info = await ok(
        api, "POST", "/rpc/jsonrpc", json=rpc("device_serial_1", "deviceInfo"), headers=headers
    )
    assert (info["displayWidth"], info["displayHeight"]) == (720, 1280)

    r = await api.get(
        "/api/v1/rpc/screenshot", params={"serial": "device_serial_1"}, headers=headers
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    shot = r.content
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(shot) > ONE_MIB  # larger than one NATS message: it came in pieces
    assert struct.unpack(">II", shot[16:24]) == (720, 1280)
    with Image.open(io.BytesIO(shot)) as image:
        image.load()
        assert image.size == (720, 1280)

    r = await api.get(
        "/api/v1/rpc/hierarchy", params={"serial": "device_serial_1"}, headers=headers
    )
    assert r.status_code == 200 and "xml" in r.headers["content-type"]
    root = ET.fromstring(r.content)
    assert root.tag == "hierarchy"
    assert "device_serial_1" in [node.get("text") for node in root.iter("node")]

    # Only with its session id, only for its serial.
    await refused(
        api, 403, 40303, "POST", "/rpc/jsonrpc", json=rpc("device_serial_1", "deviceInfo")
    )
    message = await refused(
        api,
        403,
        40303,
        "POST",
        "/rpc/jsonrpc",
        json=rpc("device_serial_2", "deviceInfo"),
        headers=headers,
    )
    assert "device_serial_1, not device_serial_2" in message
    await refused(
        api,
        403,
        40303,
        "GET",
        "/rpc/screenshot",
        params={"serial": "device_serial_1"},
        headers={"x-session-id": "0" * 32},
    )

    # adb is off until an admin turns it on for the host.
    adb = {"serial": "device_serial_1", "args": ["shell", "echo", "hi"]}
    await refused(api, 403, 40304, "POST", "/rpc/adb", json=adb, headers=headers)
    await ok(api, "PUT", "/rpc/adb/hosts/host-1", json={"enabled": True})
    assert await ok(api, "POST", "/rpc/adb", json=adb, headers=headers) == "hi\n"

    # A task for the leased phone waits; one for a free phone runs meanwhile.
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 256)
    config = {"content_type": 0, "material_list": [str(video)], "upload_wait_time": 0}
    created = await ok(
        api,
        "POST",
        "/task",
        json={
            "serials": ["device_serial_1", "device_serial_2"],
            "script_name": "post",
            "script_config": config,
        },
    )
    waiting, other = created["task_ids"]
    await wait_status(api, other, 2)
    held = await task(api, waiting)
    assert held["status"] == 0 and held["agent_id"] is None, held
    assert held["reason"] == "device leased by local (test); waits until the lease ends"

    await ok(api, "DELETE", f"/rpc/session/{sid}")
    await wait_status(api, waiting, 2)
    await refused(
        api,
        403,
        40303,
        "POST",
        "/rpc/jsonrpc",
        json=rpc("device_serial_1", "deviceInfo"),
        headers=headers,
    )

    # A lease nobody renews frees its phone by itself, and stops working.
    short = await lease(api, "device_serial_3", ttl=1)

    async def freed() -> bool:
        return (await busy(api))["device_serial_3"] is False

    await poll_until(freed, within=10, what="the unrenewed lease to expire")
    await refused(
        api,
        403,
        40303,
        "POST",
        "/rpc/jsonrpc",
        json=rpc("device_serial_3", "deviceInfo"),
        headers={"x-session-id": short},
    )
    await refused(api, 403, 40303, "POST", f"/rpc/session/{short}/heartbeat")
    await ok(api, "DELETE", f"/rpc/session/{await lease(api, 'device_serial_3')}")

    # A phone that goes away under its lease is a clear 409, not a hang.
    gone = await lease(api, "device_serial_2")
    await bus.request("sim.host-1.unplug", b'{"serial": "device_serial_2"}', timeout=5)
    message = await refused(
        api,
        409,
        40901,
        "POST",
        "/rpc/jsonrpc",
        json=rpc("device_serial_2", "deviceInfo"),
        headers={"x-session-id": gone},
    )
    assert "device_serial_2" in message
    await bad_input_names_the_field(api)


async def bad_input_names_the_field(api: httpx.AsyncClient) -> None:
    message = await refused(api, 400, 40001, "POST", "/rpc/session", json={"serial": "nope"})
    assert message.startswith("serial:") and "nope" in message
    message = await refused(
        api, 400, 40001, "POST", "/rpc/session", json={"serial": "device_serial_4", "ttl_secs": -5}
    )
    assert "ttl_secs" in message
    sid = await lease(api, "device_serial_4")
    headers = {"x-session-id": sid}
    message = await refused(
        api,
        400,
        40001,
        "POST",
        "/rpc/jsonrpc",
        headers=headers,
        json={"serial": "device_serial_4", "method": 123, "params": []},
    )
    assert message.startswith("method:")
    message = await refused(
        api,
        400,
        40001,
        "POST",
        "/rpc/jsonrpc",
        headers=headers,
        json={"serial": "device_serial_4", "method": "click", "params": ["x" * 70_000]},
    )
    assert message.startswith("params:") and "65536" in message
    message = await refused(
        api,
        400,
        40001,
        "POST",
        "/rpc/jsonrpc",
        headers=headers,
        json=rpc("device_serial_4", "noSuchMethod"),
    )
    assert "noSuchMethod" in message


async def roles_decide_who_leases_and_who_registers(
    serve: Callable[..., Awaitable[Served]], keys_kv: KeyValue
) -> None:
    """Keys with roles (made last: once a key exists, loopback is no longer open)."""
    viewer = await create_key(keys_kv, "watcher", Plan.PRO, Role.VIEWER)
    operator = await create_key(keys_kv, "ops", Plan.PRO, Role.OPERATOR)
    keyed = (await serve(api_require_keys="true")).client
    as_viewer = {"X-API-Key": viewer}
    as_operator = {"X-API-Key": operator}

    async def keys_loaded() -> bool:
        r = await keyed.get("/api/v1/rpc/devices", headers=as_viewer)
        return r.status_code == 200

    await poll_until(keys_loaded, what="the keyed gateway to know the new keys")
    await refused(
        keyed,
        403,
        40302,
        "POST",
        "/rpc/session",
        headers=as_viewer,
        json={"serial": "device_serial_1"},
    )
    script = {"name": "probe", "command": [sys.executable, "-c", "pass"]}
    await refused(keyed, 403, 40302, "POST", "/script", headers=as_operator, json=script)
    await refused(
        keyed,
        403,
        40302,
        "PUT",
        "/rpc/adb/hosts/host-1",
        headers=as_operator,
        json={"enabled": True},
    )
    sid = (
        await ok(
            keyed, "POST", "/rpc/session", headers=as_operator, json={"serial": "device_serial_1"}
        )
    )["session_id"]
    [listed] = await ok(keyed, "GET", "/rpc/session", headers=as_viewer)
    assert listed["actor"] == "ops"
    # The session is the program's credential: no key needed to drive its phone.
    info = await ok(
        keyed,
        "POST",
        "/rpc/jsonrpc",
        json=rpc("device_serial_1", "deviceInfo"),
        headers={"x-session-id": sid},
    )
    assert info["serial"] == "device_serial_1"
    await refused(
        keyed, 403, 40303, "POST", "/rpc/jsonrpc", json=rpc("device_serial_1", "deviceInfo")
    )


PROGRAM = textwrap.dedent(
    """
    import json, os, sys, time, urllib.request

    config = json.loads(os.environ["TIKMATRIX_SCRIPT_CONFIG"])
    serial = os.environ["TIKMATRIX_SERIAL"]
    body = {"serial": serial, "method": "deviceInfo", "params": []}
    request = urllib.request.Request(
        os.environ["TIKMATRIX_API_BASE"] + "/api/v1/rpc/jsonrpc",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json",
                 "x-session-id": os.environ["TIKMATRIX_SESSION_ID"]},
    )
    info = json.load(urllib.request.urlopen(request, timeout=10))["data"]
    print(f"hello from {serial}: {info['displayWidth']}x{info['displayHeight']}"
          f" on {os.environ['TIKMATRIX_PLATFORM']}", flush=True)
    print("a warning", file=sys.stderr, flush=True)
    if config.get("mode") == "sleep":
        time.sleep(120)
    sys.exit(int(config.get("exit", 0)))
    """
)


async def test_custom_scripts_run_as_tasks(
    fleet: Fleet,
    tmp_path: Path,
    serve: Callable[..., Awaitable[Served]],
    keys_kv: KeyValue,
) -> None:
    api = fleet.api
    program = tmp_path / "probe.py"
    program.write_text(PROGRAM)
    command = [sys.executable, str(program)]
    await ok(
        api,
        "POST",
        "/script",
        json={
            "name": "probe",
            "command": command,
            "platform": "generic",
            "timeout_secs": 30,
            "hosts": ["host-1"],
        },
    )
    await ok(
        api,
        "POST",
        "/script",
        json={
            "name": "sleeper",
            "command": command,
            "timeout_secs": 2,
        },
    )
    await ok(
        api,
        "POST",
        "/script",
        json={
            "name": "elsewhere",
            "command": command,
            "hosts": ["host-9"],
        },
    )
    scripts = {s["name"]: s for s in await ok(api, "GET", "/script")}
    assert scripts["post"]["builtin"] and scripts["probe"]["kind"] == "custom"
    assert scripts["probe"]["command"] == command

    async def create(script: str, serial: str, config: dict[str, Any]) -> int:
        data = await ok(
            api,
            "POST",
            "/task",
            json={
                "serials": [serial],
                "script_name": script,
                "script_config": config,
            },
        )
        task_id: int = data["task_ids"][0]
        return task_id

    done = await create("probe", "device_serial_1", {"exit": 0})
    failed = await create("probe", "device_serial_2", {"exit": 3})
    sleeping = await create("sleeper", "device_serial_3", {"mode": "sleep"})

    finished = await wait_status(api, done, 2)
    assert finished["reason"] is None
    log = (await api.get(f"/api/v1/task/{done}/log")).text
    assert "hello from device_serial_1: 720x1280 on generic" in log
    assert "[stderr] a warning" in log

    failure = await wait_status(api, failed, 3)
    assert "exited with code 3" in failure["reason"] and "a warning" in failure["reason"]

    await wait_status(api, sleeping, 1)
    message = await refused(
        api, 409, 40901, "POST", "/rpc/session", json={"serial": "device_serial_3"}
    )
    assert f"running task {sleeping}" in message
    killed = await wait_status(api, sleeping, 3)
    assert "timeout of 2s" in killed["reason"] and "killed" in killed["reason"]

    # The leases made for the runs ended with them.
    async def no_leases() -> bool:
        return await ok(api, "GET", "/rpc/session") == []

    await poll_until(no_leases, what="the runs' leases to end")

    message = await refused(
        api,
        400,
        40001,
        "POST",
        "/task",
        json={
            "serials": ["device_serial_4"],
            "script_name": "elsewhere",
            "script_config": {},
        },
    )
    assert message.startswith("serials:") and "host-9" in message
    message = await refused(
        api,
        400,
        40001,
        "POST",
        "/task",
        json={
            "serials": ["device_serial_4"],
            "script_name": "probe",
            "script_config": {"blob": "x" * 70_000},
        },
    )
    assert message.startswith("script_config:")

    await roles_decide_who_leases_and_who_registers(serve, keys_kv)
