"""The plan's device limit: a key's unfinished tasks may occupy at most `device_limit`
phones; a create past it is refused with 40301 naming the limit."""

from __future__ import annotations

import asyncpg
import pytest
from nats.js.kv import KeyValue

from fleet_contracts.codes import PLAN_DEVICE_LIMITS, ErrorCode, Plan
from fleet_scheduler.device_limit import check_device_limit
from fleet_scheduler.errors import Rejected

from .conftest import Served, add_devices, new_key, poll_until

CONFIG = {"material_list": ["/m/v.mp4"]}


async def test_a_create_past_the_plan_device_limit_is_refused(
    api_and_db: tuple[Served, asyncpg.Connection], keys_kv: KeyValue
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, 30)
    secret = await new_key(keys_kv, "ops", Plan.PRO)  # 20 devices
    other = await new_key(keys_kv, "other", Plan.PRO)
    gw = api.client

    def create(key: str, targets: list[str]) -> object:
        return gw.post(
            "/api/v1/task",
            json={"serials": targets, "script_name": "post", "script_config": CONFIG},
            headers={"X-API-Key": key},
        )

    async def keys_known() -> bool:
        for key in (secret, other):
            r = await gw.get("/api/v1/license/check", headers={"X-API-Key": key})
            if r.status_code != 200:
                return False
        return r.json()["data"]["device_limit"] == 20

    await poll_until(keys_known, what="the gateway to see both keys")
    r = await create(secret, serials[:15])
    assert r.status_code == 200, r.text
    # Phones already in use cost nothing more: more tasks on the same 15 pass.
    assert (await create(secret, serials[:15])).status_code == 200
    r = await create(secret, serials[10:16] + serials[16:22])  # 7 new: 22 > 20
    assert r.status_code == 403, r.text
    assert r.json()["code"] == 40301
    message = r.json()["message"]
    assert "at most 20 devices" in message and "on 15" in message and "adds 7" in message
    assert (await create(secret, serials[15:20])).status_code == 200  # exactly 20
    # A device session is held to the same count: a 21st phone has no free slot.
    r = await gw.post(
        "/api/v1/rpc/session",
        json={"serial": serials[22], "label": "probe", "ttl_secs": 60},  # an online one
        headers={"X-API-Key": secret},
    )
    assert r.status_code == 409, r.text
    assert "no free device slot" in r.json()["message"]
    assert "occupy 20" in r.json()["message"]
    # Another key counts its own phones.
    assert (await create(other, serials[10:30])).status_code == 200
    # Deleted tasks free their phones.
    ids = [
        t["id"]
        for t in (
            await gw.get(
                "/api/v1/task", params={"serial": serials[0]}, headers={"X-API-Key": secret}
            )
        ).json()["data"]["tasks"]
    ]
    r = await gw.request(
        "DELETE", "/api/v1/task/batch", json={"task_ids": ids}, headers={"X-API-Key": secret}
    )
    assert r.status_code == 200, r.text
    assert (await create(secret, [serials[25]])).status_code == 200


async def test_keyless_local_mode_has_no_device_limit(
    api_and_db: tuple[Served, asyncpg.Connection],
) -> None:
    api, conn = api_and_db
    serials = await add_devices(conn, PLAN_DEVICE_LIMITS[Plan.BUSINESS] + 1)
    r = await api.client.post(
        "/api/v1/task", json={"serials": serials, "script_name": "post", "script_config": CONFIG}
    )
    # Over MAX_TARGETS (1000) in one request, so in two.
    assert r.status_code == 400
    for part in (serials[:600], serials[600:]):
        r = await api.client.post(
            "/api/v1/task", json={"serials": part, "script_name": "post", "script_config": CONFIG}
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("limit", "in_use", "wanted", "refused"),
    [
        (None, set(), [f"s{n}" for n in range(5000)], False),
        (2, {"a", "b"}, ["a", "b", "a"], False),
        (2, {"a"}, ["b"], False),
        (2, {"a", "b"}, ["c"], True),
        (1, set(), ["a", "b"], True),
    ],
)
def test_device_limit_rule(
    limit: int | None, in_use: set[str], wanted: list[str], refused: bool
) -> None:
    if not refused:
        check_device_limit(limit, in_use, wanted)
        return
    with pytest.raises(Rejected) as err:
        check_device_limit(limit, in_use, wanted)
    assert err.value.code is ErrorCode.PLAN_NO_API_ACCESS
    assert f"at most {limit} devices" in err.value.message
