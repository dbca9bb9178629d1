"""The material library across two hosts, through the whole stack as processes.

One stack, one scenario (the suite's time budget is tight): a 50 MB upload with the
gateway's peak memory measured, a cut-off upload and a digest mismatch that leave
nothing behind, one upload posted on phones of both hosts (each host fetches it once),
and a failed simulated step whose screenshot and hierarchy the API serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats

from fleet_contracts.agent import Heartbeat
from fleet_contracts.materials import MATERIALS_BUCKET
from fleet_devstack.stack import AgentSpec
from tests.e2e.conftest import StackFactory
from tests.e2e.harness import Api, wait_until

BIG = 50 * 1024 * 1024
PIECE = 256 * 1024
MEMORY_BOUND = 20 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def multipart(
    boundary: str, body: Iterator[bytes], filename: str, **fields: str
) -> Iterator[bytes]:
    for name, value in fields.items():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    yield from body
    yield f"\r\n--{boundary}--\r\n".encode()


def pieces(total: int, seed: bytes) -> Iterator[bytes]:
    """`total` bytes made on the fly, so the test itself never holds them."""
    block = hashlib.sha256(seed).digest() * (PIECE // 32)
    sent = 0
    while sent < total:
        part = block[: min(PIECE, total - sent)]
        sent += len(part)
        yield part


def digest_of(total: int, seed: bytes) -> str:
    h = hashlib.sha256()
    for part in pieces(total, seed):
        h.update(part)
    return h.hexdigest()


def stored_messages(nats_url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(f"OBJ_{MATERIALS_BUCKET}")
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def cache_counts(nats_url: str, agent_id: str) -> dict[str, int]:
    async def beat() -> dict[str, int]:
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.subscribe(f"heartbeat.{agent_id}")
            msg = await sub.next_msg(timeout=5)
            return Heartbeat.from_bytes(msg.data).material_cache or {}
        finally:
            await nc.close()

    return asyncio.run(beat())


def cut_off_upload(api_url: str, sent: int) -> None:
    """A client that announces a big body, sends part of it and hangs up."""
    url = urlsplit(api_url)
    boundary = uuid.uuid4().hex
    head = next(multipart(boundary, iter(()), "cut.mp4"))
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            (
                "POST /api/v1/material HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + sent * 2}\r\n\r\n"
            ).encode()
            + head
        )
        for part in pieces(sent, b"cut"):
            sock.sendall(part)


def test_one_library_for_every_host(stack_factory: StackFactory, tmp_path: Path) -> None:
    agents = [
        AgentSpec(
            agent_id=name,
            sim_devices=2,
            sim_speed=0.02,
            env={
                "FLEET_AGENT_SIM_SERIAL_PREFIX": prefix,
                "FLEET_AGENT_MATERIAL_CACHE_DIR": str(tmp_path / f"cache-{name}"),
            },
        )
        for name, prefix in (("host-1", "h1_serial_"), ("host-2", "h2_serial_"))
    ]
    stack = stack_factory(agents=agents)
    api = Api(stack.api_url, timeout=120)
    nats_url = stack.nats.url
    gateway = stack.api
    assert gateway is not None and gateway.pid is not None

    # Warm the upload path, then measure the peak across a 50 MB upload.
    small = api.ok(
        "POST", "/material", files={"file": ("clip.mp4", b"\x00" * 4096)}, data={"tags": "clips"}
    )
    before = peak_rss(gateway.pid)
    boundary = uuid.uuid4().hex
    resp = api.http.post(
        "/material",
        content=multipart(boundary, pieces(BIG, b"big"), "big.mp4", tags="big"),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status_code == 200, resp.text
    big = resp.json()["data"]
    assert big["size"] == BIG and big["sha256"] == digest_of(BIG, b"big")
    growth = peak_rss(gateway.pid) - before
    print(f"gateway peak RSS grew {growth / 1e6:.1f} MB over a {BIG / 1e6:.0f} MB upload")
    assert growth < MEMORY_BOUND, f"gateway peak RSS grew by {growth} bytes"

    # Refused uploads leave no item and no bytes.
    stored = stored_messages(nats_url)
    cut_off_upload(stack.api_url, 3 * 1024 * 1024)
    status, body = api.call(
        "POST",
        "/material",
        files={"file": ("x.mp4", b"these bytes")},
        data={"sha256": hashlib.sha256(b"other bytes").hexdigest()},
    )
    assert status == 400 and body["message"].startswith("sha256: "), body
    wait_until(
        lambda: stored_messages(nats_url) == stored,
        timeout=10,
        what="the cut-off upload's chunks to be purged",
    )
    listed = api.ok("GET", "/material", params={"page_size": 100})
    assert {m["id"] for m in listed["materials"]} == {small["id"], big["id"]}

    # Posted on phones of both hosts from one upload: each host fetches it once.
    serials = ["h1_serial_1", "h1_serial_2", "h2_serial_1", "h2_serial_2"]
    ids = api.create(
        serials=serials, script_config={"materials_tags": "clips", "upload_wait_time": 0}
    )
    for task in api.wait_all_done(ids):
        assert task["status"] == 2, task
    for host in ("host-1", "host-2"):
        counts = cache_counts(nats_url, host)
        assert (counts["misses"], counts["hits"]) == (1, 1), (host, counts)
        assert counts["fetched_bytes"] == 4096
    picked = [
        e for e in api.ok("GET", f"/task/{ids[0]}/events") if e["type"] == "task.materials_picked"
    ]
    assert [m["id"] for m in picked[0]["data"]["materials"]] == [small["id"]]

    # A step that fails on a simulated phone leaves evidence the API serves.
    async def break_step() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.request(
                "sim.host-2.fail",
                json.dumps({"serial": "h2_serial_1", "step": "post"}).encode(),
                timeout=5,
            )
        finally:
            await nc.close()

    asyncio.run(break_step())
    [failing] = api.create(
        serials=["h2_serial_1"],
        script_config={"material_list": [f"library:{small['id']}"], "upload_wait_time": 0},
    )
    failed = api.wait_status(failing, 3)
    assert "post step 'post' failed" in failed["reason"]
    artifacts: list[dict[str, Any]] = api.ok("GET", f"/task/{failing}/artifacts")
    assert sorted(a["file"] for a in artifacts) == ["hierarchy.xml", "screenshot.png"]
    for artifact in artifacts:
        got = api.http.get(artifact["url"])
        assert got.status_code == 200 and len(got.content) == artifact["size"]
        if artifact["file"] == "screenshot.png":
            assert got.headers["content-type"] == "image/png"
            assert got.content.startswith(b"\x89PNG\r\n\x1a\n")
        else:
            assert b"<hierarchy" in got.content
    api.close()
