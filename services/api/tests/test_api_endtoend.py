"""Every endpoint through HTTP against a real in-process scheduler (PostgreSQL) and a
simulated device agent on the same NATS: the seed's example, both create modes, the
task lifecycle (stop, retry, retry-all, delete, batch delete), Idempotency-Key, 404 and
409, accounts, the event history and the live stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet_agent.app import Agent
from fleet_agent.settings import AgentSettings
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Served, poll_until
from .test_api_events import read_sse

# The seed's example, as pasted (002_*.txt), with a second serial and a file that exists.
SEED_BODY = """{
"serials": ["device_serial_1", "device_serial_2"],
"script_name": "post",
"script_config": {
"content_type": 0,
"captions": "Check out my new video! #viral #fyp",
"material_list": ["VIDEO"],
"upload_wait_time": 60
}
}"""


@pytest.fixture
def video(tmp_path: Path) -> str:
    path = tmp_path / "video1.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4096)
    return str(path)


@pytest.fixture
async def fleet(
    serve: Callable[..., Awaitable[Served]], nats_url: str, pg_dsn: str
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway, a scheduler and an agent with four simulated phones (100x speed)."""
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
        )
    )
    async with scheduler, agent:
        api = await serve()
        client = api.client

        async def all_online() -> bool:
            r = await client.get("/api/v1/device", params={"online": "true"})
            return r.status_code == 200 and r.json()["data"]["total"] == 4

        await poll_until(all_online, what="four simulated phones online")
        yield client


async def task(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    r = await client.get(f"/api/v1/task/{task_id}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def wait_status(client: httpx.AsyncClient, task_id: int, status: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await task(client, task_id))
        return bool(found["status"] == status)

    await poll_until(reached, what=f"task {task_id} to reach status {status}")
    return found


def long_post(serials: list[str], video: str) -> dict[str, Any]:
    """A post that runs ~36 s at the test speed: long enough to be stopped running."""
    return {
        "serials": serials,
        "script_name": "post",
        "script_config": {"material_list": [video], "upload_wait_time": 3600},
    }


async def test_the_seed_example_creates_two_tasks_that_run_to_completion(
    fleet: httpx.AsyncClient, video: str
) -> None:
    r = await fleet.post(
        "/api/v1/task",
        content=SEED_BODY.replace("VIDEO", video),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 0
    assert body["message"] == "success"
    assert body["data"]["created_count"] == 2
    ids = body["data"]["task_ids"]
    assert len(ids) == 2
    for task_id in ids:
        done = await wait_status(fleet, task_id, 2)
        assert done["source"] == "api"
        assert done["script_name"] == "post"
        assert done["script_config"]["captions"] == "Check out my new video! #viral #fyp"
        assert done["started_at"] and done["finished_at"] and done["created_at"]
        assert done["retry_count"] == 0 and done["reason"] is None
    assert {(await task(fleet, i))["serial"] for i in ids} == {"device_serial_1", "device_serial_2"}

    r = await fleet.get("/api/v1/task/stats")
    assert r.json()["data"] == {"total": 2, "pending": 0, "running": 0, "completed": 2, "failed": 0}
    r = await fleet.get("/api/v1/task", params={"status": 2, "source": "api", "page_size": 1})
    page = r.json()["data"]
    assert page["total"] == 2 and page["page_size"] == 1 and len(page["tasks"]) == 1
    r = await fleet.get("/api/v1/task", params={"serial": "device_serial_2", "script_name": "post"})
    assert [t["id"] for t in r.json()["data"]["tasks"]] == [ids[1]]
    r = await fleet.get("/api/v1/task", params={"source": "ui"})
    assert r.json()["data"]["total"] == 0
    r = await fleet.get("/api/v1/task", params={"status": 0})
    assert r.json()["data"]["total"] == 0

    r = await fleet.get(f"/api/v1/task/{ids[0]}/events")
    kinds = [e["type"] for e in r.json()["data"]]
    assert kinds[0] == "task.created"
    assert kinds[-1] == "task.completed"
    assert "task.started" in kinds

    # The live stream replays the same history from the start of the log.
    got = await read_sse(fleet, len(kinds), params={"task_id": ids[0], "since": 0})
    assert [e["event"] for e in got] == kinds
    assert json.loads(got[-1]["data"])["data"]["task_id"] == ids[0]


async def test_username_mode_and_multi_account_mode(fleet: httpx.AsyncClient, video: str) -> None:
    config = {"material_list": [video], "upload_wait_time": 0}

    async def accounts_known() -> bool:
        r = await fleet.get("/api/v1/account", params={"serial": "device_serial_4"})
        return {a["username"] for a in r.json()["data"]["accounts"]} == {"sim_4_a", "sim_4_b"}

    await poll_until(accounts_known, what="the agent's accounts")
    r = await fleet.post(
        "/api/v1/task",
        json={"usernames": ["sim_3_a"], "script_name": "post", "script_config": config},
    )
    assert r.status_code == 200, r.text
    (one,) = r.json()["data"]["task_ids"]
    created = await task(fleet, one)
    assert created["serial"] == "device_serial_3"
    assert created["username"] == "sim_3_a"

    r = await fleet.post(
        "/api/v1/task",
        json={
            "serials": ["device_serial_4"],
            "enable_multi_account": True,
            "script_name": "post",
            "script_config": config,
            "min_interval": 1,
            "max_interval": 2,
        },
    )
    assert r.json()["data"]["created_count"] == 2
    usernames = {(await task(fleet, i))["username"] for i in r.json()["data"]["task_ids"]}
    assert usernames == {"sim_4_a", "sim_4_b"}

    r = await fleet.post(
        "/api/v1/task",
        json={
            "serials": ["device_serial_1", "nope_1"],
            "script_name": "post",
            "script_config": config,
        },
    )
    assert r.status_code == 400
    assert r.json()["code"] == 40001
    assert "nope_1" in r.json()["message"]
    r = await fleet.post(
        "/api/v1/task",
        json={"usernames": ["ghost"], "script_name": "post", "script_config": config},
    )
    assert r.status_code == 400
    assert "ghost" in r.json()["message"]
    # Two hours ahead: a fixed time of day is due at once in the minute it names.
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%H:%M")
    r = await fleet.post(
        "/api/v1/task",
        json={"serials": ["device_serial_1"], "script_name": "post", "start_time": later},
    )
    assert r.status_code == 200
    held = await task(fleet, r.json()["data"]["task_ids"][0])
    assert held["status"] == 0
    assert held["start_time"] == later
    r = await fleet.get("/api/v1/task/stats")
    assert r.json()["data"]["total"] == 4


async def test_stop_retry_delete_and_their_wrong_states(
    fleet: httpx.AsyncClient, video: str
) -> None:
    r = await fleet.post(
        "/api/v1/task", json=long_post(["device_serial_1", "device_serial_2"], video)
    )
    first, second = r.json()["data"]["task_ids"]
    await wait_status(fleet, first, 1)

    r = await fleet.post(f"/api/v1/task/{first}/retry")
    assert r.status_code == 409
    assert r.json()["code"] == 40901
    assert "only failed tasks can be retried" in r.json()["message"]

    r = await fleet.post(f"/api/v1/task/{first}/stop")
    assert r.status_code == 200, r.text
    assert r.json()["code"] == 0
    stopped = await wait_status(fleet, first, 3)
    assert stopped["reason"] == "stopped"

    r = await fleet.post(f"/api/v1/task/{first}/retry")
    assert r.status_code == 200
    retried = await task(fleet, first)
    assert retried["status"] in (0, 1)
    assert retried["retry_count"] == 1

    # Delete stops a running task first; it is then gone.
    await wait_status(fleet, second, 1)
    r = await fleet.delete(f"/api/v1/task/{second}")
    assert r.status_code == 200
    r = await fleet.get(f"/api/v1/task/{second}")
    assert r.status_code == 404
    assert r.json()["code"] == 40401
    assert str(second) in r.json()["message"]

    for method, path in [
        ("GET", "/api/v1/task/999999"),
        ("GET", "/api/v1/task/999999/events"),
        ("POST", "/api/v1/task/999999/stop"),
        ("POST", "/api/v1/task/999999/retry"),
        ("DELETE", "/api/v1/task/999999"),
    ]:
        r = await fleet.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["code"] == 40401


async def test_retry_all_and_batch_delete(fleet: httpx.AsyncClient, video: str) -> None:
    r = await fleet.post(
        "/api/v1/task", json=long_post(["device_serial_3", "device_serial_4"], video)
    )
    ids = r.json()["data"]["task_ids"]
    for task_id in ids:
        await wait_status(fleet, task_id, 1)
        assert (await fleet.post(f"/api/v1/task/{task_id}/stop")).status_code == 200
    for task_id in ids:
        await wait_status(fleet, task_id, 3)
    r = await fleet.post("/api/v1/task/retry-all")
    assert r.status_code == 200
    assert sorted(r.json()["data"]["task_ids"]) == sorted(ids)
    assert r.json()["data"]["retried_count"] == 2
    r = await fleet.post("/api/v1/task/retry-all")
    assert r.json()["data"]["retried_count"] == 0

    r = await fleet.request("DELETE", "/api/v1/task/batch", json={"task_ids": [*ids, 424242]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert sorted(data["deleted_ids"]) == sorted(ids)
    assert data["deleted_count"] == 2
    assert data["not_found_ids"] == [424242]
    r = await fleet.get("/api/v1/task/stats")
    assert r.json()["data"]["total"] == 0


async def test_idempotency_key_returns_the_first_result(
    fleet: httpx.AsyncClient, video: str
) -> None:
    body = {
        "serials": ["device_serial_1"],
        "script_name": "post",
        "script_config": {"material_list": [video]},
    }
    headers = {"Idempotency-Key": "order-77"}
    first = await fleet.post("/api/v1/task", json=body, headers=headers)
    again = await fleet.post("/api/v1/task", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    other = await fleet.post("/api/v1/task", json=body, headers={"Idempotency-Key": "order-78"})
    assert other.json()["data"]["task_ids"] != first.json()["data"]["task_ids"]
    r = await fleet.get("/api/v1/task/stats")
    assert r.json()["data"]["total"] == 2


async def test_a_create_that_times_out_is_applied_once_and_read_back_with_its_key(
    serve: Callable[..., Awaitable[Served]], fleet: httpx.AsyncClient, video: str
) -> None:
    # A gateway whose command deadline is too short for any answer to arrive.
    hurried = (await serve(api_command_timeout_seconds=0.001)).client
    body = {
        "serials": ["device_serial_2"],
        "script_name": "post",
        "script_config": {"material_list": [video]},
    }
    headers = {"Idempotency-Key": "slow-1"}
    r = await hurried.post("/api/v1/task", json=body, headers=headers)
    results = [r]
    if r.status_code == 503:
        assert "accepted under id" in r.json()["message"]
        assert "same Idempotency-Key" in r.json()["message"]

    async def answered() -> bool:
        results.append(await fleet.post("/api/v1/task", json=body, headers=headers))
        return results[-1].status_code == 200

    await poll_until(answered, what="the recorded result")
    r = await hurried.post("/api/v1/task", json=body, headers=headers)
    ok = [x.json()["data"]["task_ids"] for x in [*results, r] if x.status_code == 200]
    assert all(ids == ok[0] for ids in ok)
    stats = await fleet.get("/api/v1/task/stats")
    assert stats.json()["data"]["total"] == 1


async def test_accounts_register_list_and_remove(fleet: httpx.AsyncClient) -> None:
    r = await fleet.post(
        "/api/v1/account",
        json={"username": "brand_x", "platform": "instagram", "serial": "device_serial_2"},
    )
    assert r.status_code == 200, r.text
    r = await fleet.get("/api/v1/account", params={"serial": "device_serial_2"})
    mine = [a for a in r.json()["data"]["accounts"] if a["username"] == "brand_x"]
    assert mine == [
        {
            "username": "brand_x",
            "platform": "instagram",
            "serial": "device_serial_2",
            "source": "api",
        }
    ]
    r = await fleet.post("/api/v1/task", json={"usernames": ["brand_x"], "script_name": "post"})
    assert r.status_code == 200
    assert (await task(fleet, r.json()["data"]["task_ids"][0]))["serial"] == "device_serial_2"
    assert (await fleet.delete("/api/v1/account/brand_x")).status_code == 200
    r = await fleet.delete("/api/v1/account/brand_x")
    assert r.status_code == 404
    assert r.json()["code"] == 40401
    r = await fleet.post("/api/v1/account", json={"username": "y", "serial": "device_serial_404"})
    assert r.status_code in (400, 404)


async def test_devices_and_readiness(fleet: httpx.AsyncClient) -> None:
    r = await fleet.get("/api/v1/device")
    devices = r.json()["data"]["devices"]
    assert r.json()["data"]["total"] == 4
    assert sorted(d["serial"] for d in devices) == [f"device_serial_{n}" for n in range(1, 5)]
    assert all(d["agent_id"] == "host-1" and d["online"] and not d["busy"] for d in devices)
    r = await fleet.get("/api/v1/device", params={"online": "false"})
    assert r.json()["data"]["devices"] == []
    r = await fleet.get("/readyz")
    assert r.status_code == 200
    assert r.json()["data"]["status"] == "ready"
