"""Fleet-scale scheduling through HTTP, against a real in-process scheduler (PostgreSQL),
a simulated device agent and NATS: group-targeted creates, automatic retries after
transient failures, schedules over REST, webhooks delivered to a receiver on loopback
(signed, retried after a 500, never again after a 2xx), and bad input naming the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from nats.aio.client import Client
from standardwebhooks import Webhook

from fleet_agent.app import Agent
from fleet_agent.settings import AgentSettings
from fleet_agent.sim import SimDriver
from fleet_devstack.servers import free_port
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Served, poll_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Fleet:
    client: httpx.AsyncClient
    agent: Agent

    @property
    def sim(self) -> SimDriver:
        driver = self.agent.driver
        assert isinstance(driver, SimDriver)
        return driver


@pytest.fixture
def video(tmp_path: Path) -> str:
    path = tmp_path / "video1.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4096)
    return str(path)


@pytest.fixture
async def fleet(
    serve: Callable[..., Awaitable[Served]], nats_url: str, pg_dsn: str
) -> AsyncIterator[Fleet]:
    """A gateway, a scheduler (fast retry, schedule and webhook loops) and four phones."""
    scheduler = Scheduler(
        SchedulerSettings(
            nats_url=nats_url,
            database_url=pg_dsn,
            scheduler_dispatch_poll_seconds=0.1,
            scheduler_retry_poll_seconds=0.1,
            scheduler_webhook_backoff_seconds=0.2,
            scheduler_webhook_timeout_seconds=2,
            scheduler_seed=11,
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
        client = (await serve()).client

        async def all_online() -> bool:
            r = await client.get("/api/v1/device", params={"online": "true"})
            return r.status_code == 200 and r.json()["data"]["total"] == 4

        await poll_until(all_online, what="four simulated phones online")
        yield Fleet(client, agent)


async def ok(response: Awaitable[httpx.Response]) -> Any:
    r = await response
    assert r.status_code == 200, r.text
    assert r.json()["code"] == 0, r.text
    return r.json()["data"]


async def wait_task(
    client: httpx.AsyncClient, task_id: int, done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await ok(client.get(f"/api/v1/task/{task_id}")))
        return done(found)

    await poll_until(reached, within=20, what=what)
    return found


def post(video: str, **target: Any) -> dict[str, Any]:
    return {"script_name": "post", "script_config": {"material_list": [video]}, **target}


async def test_a_group_targeted_create_runs_on_the_groups_phones(fleet: Fleet, video: str) -> None:
    c = fleet.client
    group = await ok(
        c.post("/api/v1/group", json={"name": "shop-a", "serials": ["device_serial_1"]})
    )
    await ok(c.post(f"/api/v1/group/{group['id']}/devices", json={"serials": ["device_serial_3"]}))
    await ok(c.put(f"/api/v1/group/{group['id']}", json={"name": "shop-b"}))
    listed = await ok(c.get("/api/v1/group"))
    assert [(g["name"], g["serials"]) for g in listed] == [
        ("shop-b", ["device_serial_1", "device_serial_3"])
    ]
    devices = await ok(c.get("/api/v1/device", params={"group": "shop-b"}))
    assert [d["serial"] for d in devices["devices"]] == ["device_serial_1", "device_serial_3"]
    assert devices["total"] == 2

    created = await ok(c.post("/api/v1/task", json=post(video, group="shop-b")))
    assert created["created_count"] == 2
    for task_id in created["task_ids"]:
        done = await wait_task(c, task_id, lambda t: t["status"] == 2, "group task completed")
        assert done["group"] == "shop-b"
        assert done["serial"] in ("device_serial_1", "device_serial_3")

    # Membership is read at create time: a device removed later keeps its tasks.
    await ok(
        c.request(
            "DELETE", f"/api/v1/group/{group['id']}/devices", json={"serials": ["device_serial_3"]}
        )
    )
    again = await ok(c.post("/api/v1/task", json=post(video, group="shop-b")))
    assert again["created_count"] == 1


async def history(client: httpx.AsyncClient, task_id: int) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = await ok(client.get(f"/api/v1/task/{task_id}/events"))
    return data


async def test_transient_failures_are_retried_and_the_third_attempt_completes(
    fleet: Fleet, video: str
) -> None:
    c = fleet.client
    fleet.sim.fail_runs("device_serial_2", "device_gone")
    fleet.sim.fail_runs("device_serial_2", "ui_timeout")
    retry = {"max_attempts": 3, "min_backoff_seconds": 0, "max_backoff_seconds": 0.2}
    created = await ok(
        c.post("/api/v1/task", json=post(video, serials=["device_serial_2"], retry=retry))
    )
    [task_id] = created["task_ids"]
    done = await wait_task(c, task_id, lambda t: t["status"] == 2, "the third attempt")
    assert (done["attempt"], done["auto_retries"], done["retry_count"]) == (3, 2, 2)

    events = await history(c, task_id)
    failures = [e["data"] for e in events if e["type"] == "task.failed"]
    assert [f["reason_class"] for f in failures] == ["device_gone", "ui_timeout"]
    retries = [e["data"] for e in events if e["type"] == "task.retried"]
    assert [r["automatic"] for r in retries] == [True, True]
    assert retries[0]["reason"].startswith("automatic retry 2/3 after device_gone")
    assert sum(e["type"] == "task.started" for e in events) == 3
    assert events[-1]["type"] == "task.completed"


async def test_attempts_run_out_a_manual_retry_starts_a_new_series_a_missing_file_never_retries(
    fleet: Fleet, video: str
) -> None:
    c = fleet.client
    fleet.sim.fail_runs("device_serial_4", "device_gone", times=2)
    retry = {"max_attempts": 2, "min_backoff_seconds": 0, "max_backoff_seconds": 0}
    created = await ok(
        c.post("/api/v1/task", json=post(video, serials=["device_serial_4"], retry=retry))
    )
    [task_id] = created["task_ids"]
    failed = await wait_task(
        c, task_id, lambda t: t["status"] == 3 and t["attempt"] == 2, "two failed attempts"
    )
    assert failed["reason_class"] == "device_gone"
    await ok(c.post(f"/api/v1/task/{task_id}/retry"))
    done = await wait_task(c, task_id, lambda t: t["status"] == 2, "the manual retry")
    # The manual retry adds an attempt and resets the automatic series, as its event says.
    assert (done["attempt"], done["auto_retries"]) == (3, 0)
    retries = [e["data"] for e in await history(c, task_id) if e["type"] == "task.retried"]
    assert [r["automatic"] for r in retries] == [True, False]

    # A missing file fails the same way however often it is tried: never retried.
    body = post("/nowhere/v.mp4", serials=["device_serial_4"], retry=retry)
    [missing] = (await ok(c.post("/api/v1/task", json=body)))["task_ids"]
    failed = await wait_task(c, missing, lambda t: t["status"] == 3, "the task failed")
    assert failed["reason_class"] == "missing_file"
    # A witness failing after it is retried automatically: the loop looks at failures
    # in id order, so by then it has looked at the first one too.
    fleet.sim.fail_runs("device_serial_4", "device_gone")
    witness_body = post(video, serials=["device_serial_4"], retry=retry)
    [witness] = (await ok(c.post("/api/v1/task", json=witness_body)))["task_ids"]
    await wait_task(c, witness, lambda t: t["status"] == 2, "the witness retried and done")
    again = await ok(c.get(f"/api/v1/task/{missing}"))
    assert (again["status"], again["attempt"]) == (3, 1)


async def test_schedules_over_rest_show_their_next_fires_and_pause(
    fleet: Fleet, video: str
) -> None:
    c = fleet.client
    await ok(c.post("/api/v1/group", json={"name": "night", "serials": ["device_serial_1"]}))
    body = {
        "name": "nightly",
        "weekly": {"days": ["mon", "thu"], "times": ["23:30"]},
        "timezone": "Asia/Tokyo",
        "group": "night",
        "script_name": "post",
        "script_config": {"material_list": [video]},
    }
    created = await ok(c.post("/api/v1/schedule", json=body))
    assert created["overlap"] == "skip"
    assert len(created["next_fires"]) == 5
    assert all(f.endswith("23:30:00+09:00") for f in created["next_fires"])
    paused = await ok(c.post(f"/api/v1/schedule/{created['id']}/pause"))
    assert (paused["enabled"], paused["next_fires"]) == (False, [])
    daily = {**body, "weekly": None, "cron": "0 6 * * *"}
    replaced = await ok(c.put(f"/api/v1/schedule/{created['id']}", json=daily))
    assert replaced["cron"] == "0 6 * * *" and replaced["enabled"]
    assert len(await ok(c.get("/api/v1/schedule"))) == 1
    await ok(c.delete(f"/api/v1/schedule/{created['id']}"))
    r = await c.get(f"/api/v1/schedule/{created['id']}")
    assert (r.status_code, r.json()["code"]) == (404, 40401)


@dataclass
class Receiver:
    """An HTTP endpoint on loopback: answers 500 to the first try of each delivery."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            headers = dict(request.headers)
            seen = sum(h["webhook-id"] == headers.get("webhook-id") for h, _, _ in self.received)
            status = 500 if seen == 0 else 204
            self.received.append((headers, await request.body(), status))
            return Response(status_code=status)

        return app

    def answered(self, delivery_id: str) -> list[int]:
        return [s for h, _, s in self.received if h["webhook-id"] == delivery_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(found.app(), host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await poll_until(lambda: server.started, what="the webhook receiver to start")
    found.url = f"http://127.0.0.1:{port}/hook"
    yield found
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_webhooks_are_signed_retried_after_a_500_and_never_sent_twice_after_a_2xx(
    fleet: Fleet, video: str, receiver: Receiver, bus: Client
) -> None:
    c = fleet.client
    hook = await ok(
        c.post(
            "/api/v1/webhook",
            json={
                "url": receiver.url,
                "event_types": ["task.completed", "batch.finished"],
                "secret": SECRET,
            },
        )
    )
    assert hook["secret"] == SECRET
    assert (await ok(c.get(f"/api/v1/webhook/{hook['id']}")))["secret"] is None

    [task_id] = (await ok(c.post("/api/v1/task", json=post(video, serials=["device_serial_1"]))))[
        "task_ids"
    ]
    await wait_task(c, task_id, lambda t: t["status"] == 2, "the task completed")

    def types_delivered() -> set[str]:
        return {json.loads(body)["type"] for _, body, status in receiver.received if status == 204}

    await poll_until(
        lambda: types_delivered() == {"task.completed", "batch.finished"},
        within=20,
        what="both deliveries taken after a 500",
    )
    verifier = Webhook(SECRET)
    for headers, body, _ in receiver.received:
        payload = verifier.verify(body, headers)
        assert payload["type"] in ("task.completed", "batch.finished")
    completed = next(h["webhook-id"] for h, b, _ in receiver.received if b"task.completed" in b)
    assert receiver.answered(completed) == [500, 204]  # the same id on the retry

    # A body changed on the way fails verification.
    headers, body, _ = receiver.received[0]
    with pytest.raises(Exception, match="signature"):
        verifier.verify(body.replace(b"task", b"TASK"), headers)

    # The same event handed to the consumer again (a relay republishing it after a
    # failover): the hook took it once, so it is not sent again. Another task's
    # completion, behind it on the consumer, shows when the replay has been handled.
    js = bus.jetstream()
    subject = f"evt.task.{task_id}.task.completed"
    original = await js.get_last_msg("EVENTS", subject)
    await js.publish(subject, original.data, headers={"Nats-Msg-Id": f"replay-{task_id}"})
    [second] = (await ok(c.post("/api/v1/task", json=post(video, serials=["device_serial_1"]))))[
        "task_ids"
    ]
    await wait_task(c, second, lambda t: t["status"] == 2, "the second task completed")
    await poll_until(
        lambda: sum(s == 204 for _, _, s in receiver.received) >= 4,
        within=20,
        what="the second task's deliveries",
    )
    assert receiver.answered(completed) == [500, 204]

    shown = await ok(c.get(f"/api/v1/webhook/{hook['id']}"))
    attempts = [
        (d["attempt"], d["status_code"], d["delivered"])
        for d in reversed(shown["deliveries"])
        if d["delivery_id"] == completed
    ]
    assert attempts == [(1, 500, False), (2, 204, True)]


BAD_INPUT: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "POST",
        "/api/v1/schedule",
        {"cron": "99 * * * *", "serials": ["device_serial_1"], "script_name": "post"},
        "cron:",
    ),
    (
        "POST",
        "/api/v1/schedule",
        {"cron": "0 9 * * *", "group": "nope", "script_name": "post"},
        "group: unknown group 'nope'",
    ),
    (
        "POST",
        "/api/v1/task",
        {"group": "nope", "script_name": "post", "script_config": {"material_list": ["/v.mp4"]}},
        "group: unknown group 'nope'",
    ),
    (
        "POST",
        "/api/v1/task",
        {"group": "g", "serials": ["device_serial_1"], "script_name": "post"},
        "group: give group, serials or usernames, only one",
    ),
    (
        "POST",
        "/api/v1/webhook",
        {"url": "ftp://example.com/x", "event_types": ["task.failed"]},
        "url: 'ftp://example.com/x' is not an http or https URL",
    ),
    (
        "POST",
        "/api/v1/webhook",
        {"url": "http://127.0.0.1/x", "event_types": ["task.exploded"]},
        "event_types:",
    ),
    (
        "POST",
        "/api/v1/task",
        {
            "serials": ["device_serial_1"],
            "script_name": "post",
            "script_config": {"material_list": ["/v.mp4"]},
            "retry": {"min_backoff_seconds": 30, "max_backoff_seconds": 5},
        },
        "retry.min_backoff_seconds: 30 is greater than max_backoff_seconds 5",
    ),
    (
        "POST",
        "/api/v1/task",
        {
            "serials": ["device_serial_1"],
            "script_name": "post",
            "script_config": {"material_list": ["/v.mp4"]},
            "retry": {"retry_on": ["invalid_config"]},
        },
        "retry.retry_on[0]: invalid_config failures are never retried",
    ),
]


async def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(fleet: Fleet) -> None:
    c = fleet.client
    for method, path, body, message in BAD_INPUT:
        r = await c.request(method, path, json=body)
        assert (r.status_code, r.json()["code"]) == (400, 40001), (path, body, r.text)
        assert message in r.json()["message"], (path, body, r.json()["message"])
    r = await c.get("/api/v1/device", params={"group": "nope"})
    assert (r.status_code, r.json()["code"]) == (400, 40001)
    assert "group: unknown group 'nope'" in r.json()["message"]
    assert await ok(c.get("/api/v1/schedule")) == []
    assert await ok(c.get("/api/v1/webhook")) == []
    assert (await ok(c.get("/api/v1/task/stats")))["total"] == 0
