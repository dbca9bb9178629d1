"""The material library through the gateway, on real NATS, PostgreSQL and a scheduler."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from fleet_contracts.agent import AgentStartedReport, DeviceInfo
from fleet_contracts.materials import ARTIFACTS_BUCKET, MATERIALS_BUCKET
from fleet_contracts.subjects import report_subject
from fleet_runtime.bus import headers_for
from fleet_runtime.objects import stream_name
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Served, poll_until


async def _has_device(client: httpx.AsyncClient) -> bool:
    resp = await client.get("/api/v1/device")
    return resp.status_code == 200 and resp.json()["data"]["total"] > 0


@pytest.fixture
async def scheduler(nats_url: str, pg_dsn: str) -> AsyncIterator[Scheduler]:
    async with Scheduler(SchedulerSettings(nats_url=nats_url, database_url=pg_dsn)) as s:
        yield s


@pytest.fixture
async def lib(serve: Callable[..., Awaitable[Served]], scheduler: Scheduler) -> Served:
    return await serve(api_material_max_bytes=1_000_000, artifact_retention_hours=2)


async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    filename: str = "clip.mp4",
    **fields: str,
) -> tuple[int, dict[str, Any]]:
    files = {"file": (filename, data, "video/mp4")}
    resp = await client.post("/api/v1/material", files=files, data=fields)
    return resp.status_code, resp.json()


async def stored_messages(bus: Client) -> int:
    info = await bus.jetstream().stream_info(stream_name(MATERIALS_BUCKET))
    return int(info.state.messages)


async def listed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    resp = await client.get("/api/v1/material", params=params)
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["data"])


async def test_upload_list_download_retag_delete(lib: Served, bus: Client) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    status, body = await upload(lib.client, data, tags="cats, summer", sha256=sha)
    assert status == 200, body
    item = body["data"]
    assert item["sha256"] == sha and item["size"] == len(data) and item["kind"] == "video"
    assert item["tags"] == ["cats", "summer"] and item["duplicate"] is False

    status, again = await upload(lib.client, data, filename="copy.mp4", tags="pets")
    assert status == 200 and again["data"]["duplicate"] is True
    assert again["data"]["id"] == item["id"] and again["data"]["tags"] == ["cats", "summer", "pets"]
    one_copy = await stored_messages(bus)

    page = await listed(lib.client, tag="pets")
    assert page["total"] == 1 and page["materials"][0]["name"] == "clip.mp4"
    assert (await listed(lib.client, tag="dogs"))["total"] == 0

    by_sha = await lib.client.get(f"/api/v1/material/{sha}")
    assert by_sha.json()["data"]["id"] == item["id"]
    content = await lib.client.get(f"/api/v1/material/{item['id']}/content")
    assert content.status_code == 200 and content.content == data
    assert content.headers["etag"] == f'"{sha}"'

    patched = await lib.client.patch(f"/api/v1/material/{item['id']}", json={"tags": ["x"]})
    assert patched.status_code == 200 and patched.json()["data"]["tags"] == ["x"]
    bad = await lib.client.patch(f"/api/v1/material/{item['id']}", json={"tags": ["a b"]})
    assert bad.status_code == 400 and bad.json()["message"].startswith("tags: ")

    gone = await lib.client.delete(f"/api/v1/material/{item['id']}")
    assert gone.status_code == 200
    assert (await listed(lib.client))["total"] == 0
    missing = await lib.client.get(f"/api/v1/material/{item['id']}/content")
    assert missing.status_code == 404 and missing.json()["code"] == 40401
    assert await stored_messages(bus) < one_copy  # the bytes went with the item


BAD_UPLOADS: list[tuple[str, bytes, dict[str, str], str]] = [
    ("clip.mp4", b"", {}, "file: is empty"),
    ("clip.mp4", b"x" * 1_000_001, {}, "file: larger than the upload limit of 1000000"),
    ("../../etc/clip.mp4", b"data", {}, "name: "),
    ("clip.mp4", b"data", {"name": "a..b.mp4"}, "'..'"),
    ("notes.txt", b"data", {}, "is not a video or image file"),
    ("clip.mp4", b"data", {"tags": "ok,not ok"}, "tags: 'not ok' is not a tag"),
    ("clip.mp4", b"data", {"sha256": "0" * 64}, "sha256: the bytes received hash to"),
]


async def test_bad_uploads_are_refused_naming_the_problem_and_store_nothing(
    lib: Served, bus: Client
) -> None:
    for filename, data, fields, expected in BAD_UPLOADS:
        status, body = await upload(lib.client, data, filename=filename, **fields)
        assert status == 400 and body["code"] == 40001, body
        assert expected in body["message"], body["message"]
        assert await stored_messages(bus) == 0, expected

    request = lib.client.build_request(
        "POST", "/api/v1/material", files={"file": ("clip.mp4", os.urandom(400_000))}
    )
    whole = request.read()
    cut = whole[: len(whole) // 2]  # the closing boundary never arrives
    resp = await lib.client.post(
        "/api/v1/material",
        content=cut,
        headers={"content-type": request.headers["content-type"]},
    )
    assert resp.status_code == 400, resp.text
    assert "truncated" in resp.json()["message"]
    assert await stored_messages(bus) == 0
    assert (await listed(lib.client))["total"] == 0

    plain = await lib.client.post("/api/v1/material", json={"file": "x"})
    assert plain.status_code == 400 and "multipart/form-data" in plain.json()["message"]


async def test_artifacts_bucket_keeps_the_retention_and_unknown_evidence_is_404(
    lib: Served, bus: Client
) -> None:
    info = await bus.jetstream().stream_info(stream_name(ARTIFACTS_BUCKET))
    assert info.config.max_age == 2 * 3600
    unknown = await lib.client.get("/api/v1/task/999/artifacts")
    assert unknown.status_code == 404 and unknown.json()["code"] == 40401
    gone = await lib.client.get("/api/v1/task/999/artifacts/ab12/screenshot.png")
    assert gone.status_code == 404 and "FLEET_ARTIFACT_RETENTION_HOURS" in gone.json()["message"]
    other = await lib.client.get("/api/v1/task/999/artifacts/ab12/passwd")
    assert other.status_code == 400 and other.json()["message"].startswith("file: ")


async def test_posting_from_the_library_checks_tags_and_refs(lib: Served, bus: Client) -> None:
    report = AgentStartedReport(
        agent_id="a1", host="h1", devices=[DeviceInfo(serial="device_serial_1")]
    )
    await bus.jetstream().publish(
        report_subject("a1", report.type), report.to_bytes(), headers=headers_for(report)
    )
    await poll_until(
        lambda: _has_device(lib.client), what="the device to be known to the scheduler"
    )
    await upload(lib.client, b"video bytes", tags="cats")
    devices_needed = {"serials": ["device_serial_1"], "script_name": "post"}
    for config, expected in (
        ({"materials_tags": "dogs"}, "script_config.materials_tags: no library item is tagged"),
        ({"material_list": ["library:nope"]}, "script_config.material_list[0]: 'library:nope'"),
    ):
        resp = await lib.client.post(
            "/api/v1/task", json={**devices_needed, "script_config": config}
        )
        assert resp.status_code == 400, resp.text
        assert expected in resp.json()["message"]
