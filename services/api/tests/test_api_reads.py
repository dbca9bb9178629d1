"""The hot reads (task list, filtered list, stats) send the scheduler's answer on as
the REST envelope, unparsed: what arrives must still be exactly what the contract's
models make of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from pydantic import BaseModel

from fleet_contracts.envelope import Envelope
from fleet_contracts.rest import TaskPage, TaskStats

from .conftest import Served, add_devices


async def test_list_and_stats_arrive_as_the_contract_models_make_them(
    api_and_db: tuple[Served, asyncpg.Connection], tmp_path: Path
) -> None:
    api, conn = api_and_db
    a, b, c = await add_devices(conn, 3)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 16)
    created = await api.client.post(
        "/api/v1/task",
        json={
            "serials": [a, b, c],
            "script_name": "post",
            "script_config": {"material_list": [str(clip)], "upload_wait_time": 0},
        },
    )
    assert created.status_code == 200, created.text

    async def read(path: str, model: type[BaseModel]) -> Any:
        r = await api.client.get(path)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body == model.model_validate(body).model_dump(mode="json")
        assert (body["code"], body["message"]) == (0, "success")
        return body["data"]

    page = await read("/api/v1/task?page_size=2", Envelope[TaskPage])
    assert (page["total"], page["page"], page["page_size"]) == (3, 1, 2)
    assert [t["serial"] for t in page["tasks"]] == [c, b]
    one = await read(f"/api/v1/task?status=0&serial={b}", Envelope[TaskPage])
    assert one["total"] == 1 and [t["serial"] for t in one["tasks"]] == [b]
    assert one["tasks"][0]["script_config"]["material_list"] == [str(clip)]
    stats = await read("/api/v1/task/stats", Envelope[TaskStats])
    assert stats == {"total": 3, "pending": 3, "running": 0, "completed": 0, "failed": 0}
