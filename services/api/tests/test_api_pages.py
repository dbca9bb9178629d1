"""Lists that outgrow one NATS message: `GET /device` and `GET /account` are paged,
and any page, however large its rows, reaches the caller whole (the scheduler's answer
travels in parts when it exceeds the bus's 1 MiB limit)."""

from __future__ import annotations

import asyncpg
import pytest

from fleet_runtime import replies

from .conftest import Served, add_devices

DEVICES = 6000


async def test_6000_devices_are_listed_page_by_page(
    api_and_db: tuple[Served, asyncpg.Connection],
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, DEVICES)
    seen: list[str] = []
    page = 1
    while True:
        r = await api.client.get("/api/v1/device", params={"page": page, "page_size": 500})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert (data["total"], data["page"], data["page_size"]) == (DEVICES, page, 500)
        if not data["devices"]:
            break
        seen += [d["serial"] for d in data["devices"]]
        page += 1
    assert seen == serials  # every phone once, in serial order
    assert page == DEVICES // 500 + 1
    # The filter still applies, and the total counts what it lets through.
    r = await api.client.get("/api/v1/device", params={"online": "false", "page_size": 10})
    data = r.json()["data"]
    assert data["total"] == DEVICES // 3
    assert all(not d["online"] for d in data["devices"]) and len(data["devices"]) == 10
    # The default page is 100; a page size above 500 names the parameter.
    assert len((await api.client.get("/api/v1/device")).json()["data"]["devices"]) == 100
    r = await api.client.get("/api/v1/device", params={"page_size": 501})
    assert r.status_code == 400 and "page_size" in r.json()["message"]


async def test_accounts_are_paged_with_their_filter(
    api_and_db: tuple[Served, asyncpg.Connection],
) -> None:
    api, conn = api_and_db
    await add_devices(conn, 2)
    await conn.executemany(
        "INSERT INTO accounts (username, platform, serial, source) VALUES ($1, 'tiktok', $2,"
        " 'agent')",
        [(f"user_{n:04d}", f"phone-0000{n % 2}") for n in range(1200)],
    )
    r = await api.client.get("/api/v1/account", params={"serial": "phone-00001", "page": 2})
    data = r.json()["data"]
    assert (data["total"], data["page"], data["page_size"]) == (600, 2, 100)
    assert [a["username"] for a in data["accounts"]][:2] == ["user_0201", "user_0203"]


async def test_a_page_of_100_tasks_with_4000_character_cjk_captions(
    api_and_db: tuple[Served, asyncpg.Connection],
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, 100)
    caption = ("春眠不觉晓处处闻啼鸟夜来风雨声花落知多少" * 200)[:4000]
    r = await api.client.post(
        "/api/v1/task",
        json={
            "serials": serials,
            "script_name": "post",
            "script_config": {"captions": caption, "material_list": ["/m/v.mp4"]},
        },
    )
    assert r.status_code == 200, r.text
    r = await api.client.get("/api/v1/task", params={"page_size": 100})
    assert r.status_code == 200, r.text
    assert len(r.content) > 1024 * 1024  # more than one NATS message could carry
    tasks = r.json()["data"]["tasks"]
    assert len(tasks) == 100
    assert all(t["script_config"]["captions"] == caption for t in tasks)


async def test_an_answer_too_large_to_send_is_an_error_at_once_not_a_timeout(
    api_and_db: tuple[Served, asyncpg.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, 100)
    caption = "字" * 4000
    r = await api.client.post(
        "/api/v1/task",
        json={"serials": serials, "script_name": "post", "script_config": {"captions": caption}},
    )
    assert r.status_code == 200, r.text
    # The scheduler runs in this process: lower its cap below this 1.2 MB page.
    monkeypatch.setattr(replies, "MAX_REPLY_BYTES", 1024 * 1024 + 1)
    r = await api.client.get("/api/v1/task", params={"page_size": 100})
    assert r.status_code == 500, r.text
    assert r.json()["code"] == 50001  # said by the scheduler, not a 503 after waiting
    assert "too large to send" in r.json()["message"]
    assert "smaller page" in r.json()["message"]
    r = await api.client.get("/api/v1/task", params={"page_size": 50})
    assert r.status_code == 200 and len(r.json()["data"]["tasks"]) == 50
