"""An Idempotency-Key names one request: the same key with the same body returns the
first result, the same key with another body is a 409 naming the key."""

from __future__ import annotations

from typing import Any

import asyncpg

from .conftest import Served, add_devices


def body(serials: list[str], caption: str = "hello") -> dict[str, Any]:
    return {
        "serials": serials,
        "script_name": "post",
        "script_config": {"captions": caption, "material_list": ["/m/v.mp4"]},
    }


async def test_a_key_reused_with_a_new_body_is_refused_naming_the_key(
    api_and_db: tuple[Served, asyncpg.Connection],
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, 3)
    key = {"Idempotency-Key": "order-77"}
    first = await api.client.post("/api/v1/task", json=body(serials[:1]), headers=key)
    assert first.status_code == 200, first.text
    # The same body again (keys in another order, defaults spelled out): the first result.
    same = {
        "script_config": {"material_list": ["/m/v.mp4"], "captions": "hello", "content_type": 0},
        "script_name": "post",
        "serials": serials[:1],
    }
    again = await api.client.post("/api/v1/task", json=same, headers=key)
    assert again.status_code == 200
    assert again.json() == first.json()
    for changed in (body(serials[1:2]), body(serials[:1], caption="another caption")):
        r = await api.client.post("/api/v1/task", json=changed, headers=key)
        assert r.status_code == 409, r.text
        assert r.json()["code"] == 40901
        assert "Idempotency-Key 'order-77'" in r.json()["message"]
        assert r.json()["data"]["idempotency_key"] == "order-77"
    stats = (await api.client.get("/api/v1/task/stats")).json()["data"]
    assert stats["total"] == 1  # nothing was created for the refused bodies


async def test_a_key_whose_first_create_failed_is_not_reused_for_a_fixed_body(
    api_and_db: tuple[Served, asyncpg.Connection],
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, 1)
    key = {"Idempotency-Key": "k-2"}
    r = await api.client.post("/api/v1/task", json=body(["no-such-phone"]), headers=key)
    assert r.status_code == 400
    # Replaying the failed body returns the same failure, not a new attempt ...
    r = await api.client.post("/api/v1/task", json=body(["no-such-phone"]), headers=key)
    assert r.status_code == 400 and "no-such-phone" in r.json()["message"]
    # ... and a corrected body under the same key is told to use a new key.
    r = await api.client.post("/api/v1/task", json=body(serials), headers=key)
    assert r.status_code == 409
    r = await api.client.post(
        "/api/v1/task", json=body(serials), headers={"Idempotency-Key": "k-3"}
    )
    assert r.status_code == 200
