"""Webhook delivery with two schedulers on one durable consumer: each event reaches a
hook once, and a hook that never answers holds up neither dispatch nor other work."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from fleet_contracts.commands import CreateTasks, RegisterWebhook
from fleet_contracts.queries import GetTask, GetWebhook
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.webhooks import WebhookRequest
from fleet_devstack.servers import free_port
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus, FakeAgent, eventually


@pytest.fixture
def settings(settings: SchedulerSettings) -> SchedulerSettings:
    return settings.model_copy(update={"scheduler_webhook_timeout_seconds": 30})


@pytest.fixture
async def second(settings: SchedulerSettings) -> AsyncIterator[Scheduler]:
    other = settings.model_copy(update={"scheduler_id": "test-scheduler-2"})
    async with Scheduler(other, relay_enabled=False) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A loopback endpoint counting deliveries by webhook-id; answers 200."""
    seen: Counter[str] = Counter()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        seen[request.headers["webhook-id"]] += 1
        return Response(status_code=200)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), what="receiver started")
    yield f"http://127.0.0.1:{port}/hook", seen
    server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """An endpoint that takes the connection and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/hook"
    for writer in held:
        writer.close()
    server.close()


async def register(bus: Bus, url: str, *types: str) -> int:
    result = await bus.command(
        RegisterWebhook(hook=WebhookRequest(url=url, event_types=list(types)))
    )
    assert result.ok, result.message
    hook_id: int = result.data["id"]
    return hook_id


async def create(bus: Bus, serial: str) -> int:
    request = CreateTaskRequest(serials=[serial], script_name="post")
    result = await bus.command(CreateTasks(request=request))
    assert result.ok, result.message
    task_id: int = result.data["task_ids"][0]
    return task_id


async def test_two_schedulers_deliver_each_event_once(
    bus: Bus, agent: FakeAgent, second: Scheduler, receiver: tuple[str, Counter[str]]
) -> None:
    url, seen = receiver
    hook_id = await register(bus, url, "task.created")
    for _ in range(6):
        await create(bus, "device_serial_1")

    async def all_delivered() -> bool:
        hook = (await bus.query(GetWebhook(hook_id=hook_id))).data
        return sum(d["delivered"] for d in hook["deliveries"]) == 6

    await eventually(all_delivered, what="six deliveries")
    assert len(seen) == 6
    assert set(seen.values()) == {1}


async def test_a_hook_that_never_answers_does_not_hold_up_dispatch(
    bus: Bus, agent: FakeAgent, silent: str
) -> None:
    hook_id = await register(bus, silent, "task.created", "task.completed")
    agent.auto_start = agent.auto_complete = True
    first = await create(bus, "device_serial_2")
    second = await create(bus, "device_serial_2")

    async def both_done() -> bool:
        statuses = [(await bus.query(GetTask(task_id=t))).data["status"] for t in (first, second)]
        return statuses == [2, 2]

    await eventually(both_done, what="both tasks completed")
    # The first delivery is still waiting on its 30 s timeout: nothing recorded yet.
    hook = (await bus.query(GetWebhook(hook_id=hook_id))).data
    assert hook["deliveries"] == []
