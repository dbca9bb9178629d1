"""The live event stream: SSE from the EVENTS stream, filtered by task, device and type,
resumable with Last-Event-ID (or ?last_event_id= / ?since=)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
from nats.aio.client import Client

from fleet_api.feed import FeedFilter
from fleet_contracts.events import EventEnvelope
from fleet_contracts.subjects import event_subject

from .conftest import Served

_position = 0


async def publish(bus: Client, stream_id: str, event_type: str, **data: Any) -> int:
    """Append one event to EVENTS as the scheduler's relay would; returns its sequence."""
    global _position
    _position += 1
    envelope = EventEnvelope(
        message_id=str(_position),
        position=_position,
        stream_id=stream_id,
        version=1,
        type=event_type,
        data=data,
        recorded_at=datetime.now(UTC),
    )
    ack = await bus.jetstream().publish(
        event_subject(stream_id, event_type),
        envelope.to_bytes(),
        headers={"Nats-Msg-Id": envelope.message_id},
    )
    return int(ack.seq)


async def seed(bus: Client) -> list[int]:
    return [
        await publish(
            bus,
            "device-device_serial_1",
            "device.connected",
            serial="device_serial_1",
            agent_id="h1",
            host="h1",
        ),
        await publish(
            bus, "task-1", "task.created", task_id=1, serial="device_serial_1", script_name="post"
        ),
        await publish(
            bus, "task-2", "task.created", task_id=2, serial="192.168.1.5:5555", script_name="post"
        ),
        await publish(
            bus,
            "task-1",
            "task.started",
            task_id=1,
            serial="device_serial_1",
            agent_id="h1",
            dispatch_id="d",
        ),
        await publish(bus, "task-2", "task.failed", task_id=2, reason="boom"),
        await publish(bus, "task-1", "task.completed", task_id=1),
    ]


async def read_sse(
    client: httpx.AsyncClient,
    count: int,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    on_open: Any = None,
) -> list[dict[str, str]]:
    """The first `count` SSE events (comment lines skipped), within 10 s."""
    events: list[dict[str, str]] = []
    async with asyncio.timeout(10):
        async with client.stream("GET", "/api/v1/events", params=params, headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            if on_open is not None:
                await on_open()
            current: dict[str, str] = {}
            async for line in r.aiter_lines():
                if not line:
                    if current:
                        events.append(current)
                        current = {}
                    if len(events) >= count:
                        break
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                current[name] = value[1:] if value.startswith(" ") else value
    return events


def types(events: list[dict[str, str]]) -> list[str]:
    return [e["event"] for e in events]


async def test_resume_after_last_event_id_sends_the_rest_in_order(api: Served, bus: Client) -> None:
    seqs = await seed(bus)
    got = await read_sse(api.client, 3, headers={"Last-Event-ID": str(seqs[2])})
    assert [int(e["id"]) for e in got] == seqs[3:]
    assert types(got) == ["task.started", "task.failed", "task.completed"]
    body = json.loads(got[0]["data"])
    assert body["stream_id"] == "task-1"
    assert body["data"]["task_id"] == 1
    # The same through the query string, for curl.
    got = await read_sse(api.client, 2, params={"last_event_id": seqs[3]})
    assert [int(e["id"]) for e in got] == seqs[4:]
    got = await read_sse(api.client, 1, params={"since": seqs[4]})
    assert [int(e["id"]) for e in got] == seqs[5:]


async def test_filters_by_task_serial_and_type_prefix(api: Served, bus: Client) -> None:
    seqs = await seed(bus)
    got = await read_sse(api.client, 3, params={"task_id": 1, "since": 0})
    assert types(got) == ["task.created", "task.started", "task.completed"]
    got = await read_sse(api.client, 4, params={"serial": "device_serial_1", "since": 0})
    # The device's own event, then every event of the task created on it.
    assert types(got) == ["device.connected", "task.created", "task.started", "task.completed"]
    got = await read_sse(api.client, 1, params={"serial": "192.168.1.5:5555", "since": 0})
    assert json.loads(got[0]["data"])["data"]["task_id"] == 2
    got = await read_sse(api.client, 2, params={"type": "task.created", "since": 0})
    assert [json.loads(e["data"])["data"]["task_id"] for e in got] == [1, 2]
    got = await read_sse(
        api.client, 2, params={"type": "task.", "serial": "device_serial_1", "since": seqs[0]}
    )
    assert types(got) == ["task.created", "task.started"]


async def test_without_a_resume_point_only_new_events_arrive(api: Served, bus: Client) -> None:
    await seed(bus)

    async def publish_later() -> None:
        await publish(bus, "task-9", "task.created", task_id=9, serial="s9", script_name="post")

    got = await read_sse(api.client, 1, on_open=publish_later)
    assert json.loads(got[0]["data"])["data"]["task_id"] == 9


async def test_a_bad_last_event_id_is_a_400(api: Served) -> None:
    r = await api.client.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 400
    assert r.json()["message"].startswith("Last-Event-ID:")
    r = await api.client.get("/api/v1/events", params={"task_id": "x"})
    assert r.status_code == 400
    assert r.json()["message"].startswith("task_id:")


def test_the_filter_picks_the_narrowest_subject() -> None:
    assert FeedFilter(task_id=7).subject() == "evt.task.7.>"
    assert FeedFilter(type_prefix="device.").subject() == "evt.device.>"
    assert FeedFilter(type_prefix="task.completed").subject() == "evt.task.*.task.completed"
    assert FeedFilter(type_prefix="task.comp").subject() == "evt.task.>"
    assert FeedFilter(type_prefix="ta").subject() == "evt.>"
    assert FeedFilter(serial="a.b").subject() == "evt.>"
    assert FeedFilter(serial="a.b", type_prefix="device.").subject() == "evt.device.a%2Eb.>"
    # A serial filter needs the task events that tie a task to the phone.
    assert FeedFilter(serial="a", type_prefix="task.completed").subject() == "evt.task.>"


def test_a_serial_filter_reads_only_the_events_that_tie_a_task_to_a_phone() -> None:
    feed = FeedFilter(serial="p1", type_prefix="task.completed")
    created = json.dumps({"data": {"task_id": 4, "serial": "p1"}}).encode()
    # Bodies that are not JSON at all: read, they would be refused; they are not read.
    assert not feed.accepts("evt.task.4.task.created", created)  # tracked, not wanted
    assert feed.accepts("evt.task.4.task.completed", b"not json")
    assert not feed.accepts("evt.task.5.task.completed", b"not json")
    assert not feed.accepts("evt.device.p2.device.connected", b"not json")
