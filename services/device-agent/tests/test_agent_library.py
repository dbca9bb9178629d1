"""Library items on an agent host: fetched once, verified, cached with a bound, and
failure evidence kept in the artifacts bucket — all on a real NATS server."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import Bus

from fleet_agent.app import Agent, sim_control_subject
from fleet_agent.settings import AgentSettings
from fleet_contracts.agent import AgentReply, Heartbeat, RunTask
from fleet_contracts.materials import ARTIFACTS_BUCKET, MATERIALS_BUCKET, artifact_name
from fleet_contracts.subjects import heartbeat_subject
from fleet_runtime.objects import ChunkUpload, delete, ensure_bucket

AGENT = "host-1"


@pytest.fixture
def settings_for(nats_url: str, tmp_path: Path) -> Callable[..., AgentSettings]:
    def make(**overrides: Any) -> AgentSettings:
        values: dict[str, Any] = {
            "nats_url": nats_url,
            "agent_id": AGENT,
            "agent_host": "rack-1",
            "agent_driver": "sim",
            "agent_sim_devices": 3,
            "agent_sim_speed": 0.0,
            "agent_heartbeat_seconds": 0.2,
            "agent_screenshot_dir": tmp_path / "shots",
            "agent_material_cache_dir": tmp_path / "cache",
        }
        values.update(overrides)
        return AgentSettings(**values)

    return make


@pytest.fixture
async def agent(settings_for: Callable[..., AgentSettings], bus: Bus) -> AsyncIterator[Agent]:
    await ensure_bucket(bus.js, MATERIALS_BUCKET)
    async with Agent(settings_for()) as running:
        yield running


async def put_item(bus: Bus, data: bytes, name: str | None = None) -> str:
    upload = ChunkUpload(bus.js, MATERIALS_BUCKET, chunk_size=16 * 1024)
    await upload.write(data)
    stored = await upload.commit(name)
    return name or stored.sha256


def run(task_id: int, serial: str, *shas: str, **config: Any) -> RunTask:
    return RunTask(
        task_id=task_id,
        dispatch_id=f"d{task_id}",
        serial=serial,
        script_name="post",
        script_config={
            "material_list": [f"library:{sha}.mp4" for sha in shas],
            "upload_wait_time": 0,
            **config,
        },
    )


async def outcome(bus: Bus, request: RunTask) -> Any:
    reply = await bus.run(AGENT, request)
    assert reply.accepted, reply.reason
    return await bus.outcome(request.task_id)


async def test_an_item_is_fetched_once_per_host_and_shared_by_its_phones(
    agent: Agent, bus: Bus
) -> None:
    sha = await put_item(bus, os.urandom(100_000))
    first, second = run(1, "device_serial_1", sha), run(2, "device_serial_2", sha)
    replies = [await bus.run(AGENT, first), await bus.run(AGENT, second)]
    assert all(r.accepted for r in replies)
    for request in (first, second):
        done = await bus.outcome(request.task_id)
        assert done.type == "task.completed", done
        assert done.result["files"] == [f"library:{sha}.mp4"]
    counts = agent.cache.status()
    assert (counts["misses"], counts["hits"]) == (1, 1)
    assert counts["fetched_bytes"] == 100_000 and counts["items"] == 1

    sub = await bus.nc.subscribe(heartbeat_subject(AGENT))
    beat = Heartbeat.from_bytes((await sub.next_msg(timeout=5)).data)
    await sub.unsubscribe()
    assert beat.material_cache is not None and beat.material_cache["hits"] == 1


async def test_a_corrupt_item_is_refused_and_fetched_again_once_repaired(
    agent: Agent, bus: Bus
) -> None:
    good = os.urandom(50_000)
    sha = hashlib.sha256(good).hexdigest()
    # An object under the item's name whose bytes are not the item's: a damaged store.
    await put_item(bus, os.urandom(50_000), name=sha)
    failed = await outcome(bus, run(1, "device_serial_1", sha))
    assert failed.type == "task.failed"
    assert f"library item {sha} failed its digest check" in failed.reason
    assert failed.screenshot is None  # refused before the phone was touched
    assert agent.cache.status()["refused"] == 2  # the first refusal was fetched again
    assert not any(agent.cache.directory.iterdir())  # nothing partial left behind

    await delete(bus.js, MATERIALS_BUCKET, sha)
    assert await put_item(bus, good) == sha
    done = await outcome(bus, run(2, "device_serial_1", sha))
    assert done.type == "task.completed", done
    assert agent.cache.status()["misses"] == 2
    assert (agent.cache.directory / sha).read_bytes() == good


async def test_a_deleted_item_fails_the_task_saying_so(agent: Agent, bus: Bus) -> None:
    sha = await put_item(bus, b"soon gone")
    await delete(bus.js, MATERIALS_BUCKET, sha)
    failed = await outcome(bus, run(1, "device_serial_1", sha))
    assert failed.type == "task.failed"
    assert "is no longer in the material library (deleted" in failed.reason


async def test_the_cache_stays_under_its_bound_evicting_the_least_recently_used(
    settings_for: Callable[..., AgentSettings], bus: Bus
) -> None:
    await ensure_bucket(bus.js, MATERIALS_BUCKET)
    a, b, c = [await put_item(bus, os.urandom(40_000)) for _ in range(3)]
    async with Agent(settings_for(agent_material_cache_max_bytes=100_000)) as agent:
        for n, sha in enumerate((a, b, a, c), start=1):
            assert (await outcome(bus, run(n, "device_serial_1", sha))).type == "task.completed"
        counts = agent.cache.status()
        assert counts["bytes"] <= 100_000 and counts["evictions"] == 1
        cached = {p.name for p in agent.cache.directory.iterdir()}
        assert cached == {a, c}  # b was the least recently used
    # A restart keeps what was cached and its order.
    async with Agent(settings_for(agent_material_cache_max_bytes=100_000)) as again:
        assert (await outcome(bus, run(9, "device_serial_2", a))).type == "task.completed"
        assert again.cache.status()["hits"] == 1 and again.cache.status()["misses"] == 0


async def test_a_failed_step_leaves_a_screenshot_and_a_hierarchy_in_the_artifacts_bucket(
    agent: Agent, bus: Bus
) -> None:
    sha = await put_item(bus, b"a clip")
    answer = await bus.nc.request(
        sim_control_subject(AGENT, "fail"),
        json.dumps({"serial": "device_serial_3", "step": "post"}).encode(),
        timeout=5,
    )
    assert AgentReply.model_validate_json(answer.data).accepted
    failed = await outcome(bus, run(5, "device_serial_3", sha))
    assert failed.type == "task.failed" and "post step 'post' failed" in failed.reason
    store = await bus.js.object_store(ARTIFACTS_BUCKET)
    shot = await store.get(artifact_name(5, "d5", "screenshot.png"))
    assert shot.data is not None and shot.data.startswith(b"\x89PNG\r\n\x1a\n")
    dump = await store.get(artifact_name(5, "d5", "hierarchy.xml"))
    assert dump.data is not None and b"<hierarchy" in dump.data and b"post" in dump.data
    # The next run on that phone is not affected.
    assert (await outcome(bus, run(6, "device_serial_3", sha))).type == "task.completed"
