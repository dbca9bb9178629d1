"""Calls on a phone (`sessions.call_device`) against a real NATS: an agent that is not
running is a 503 naming it at once (NATS's no-responders status, not a timeout), and an
answer in pieces comes back whole and in order."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_api.errors import ApiError
from fleet_api.kv import Mirror
from fleet_api.sessions import call_device
from fleet_api.state import Gateway
from fleet_contracts.sessions import DeviceCall, DeviceCallMeta
from fleet_contracts.subjects import HDR_CHUNK, agent_device_subject

from .conftest import make_settings


def gateway_on(bus: Client, nats_url: str) -> Gateway:
    return Gateway(
        settings=make_settings(nats_url),
        nc=bus,
        js=bus.jetstream(),
        keys=Mirror("keys", lambda k, v: None),
        scripts=Mirror("scripts", lambda k, v: None),
    )


async def test_an_agent_nobody_runs_is_named_unreachable(bus: Client, nats_url: str) -> None:
    call = DeviceCall(serial="s1", kind="jsonrpc", method="deviceInfo", timeout=60)
    with pytest.raises(ApiError) as refused:
        await call_device(gateway_on(bus, nats_url), "host-9", call)
    assert refused.value.code == 50301
    assert "agent host-9 is not reachable" in refused.value.message


async def test_an_answer_in_pieces_comes_back_whole(bus: Client, nats_url: str) -> None:
    body = bytes(range(256)) * 40

    async def agent(msg: Msg) -> None:
        pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        meta = DeviceCallMeta(content_type="image/png", size=len(body), chunks=len(pieces))
        await bus.publish(msg.reply, meta.model_dump_json().encode())
        for i, piece in enumerate(pieces):
            await bus.publish(msg.reply, piece, headers={HDR_CHUNK: str(i)})

    await bus.subscribe(agent_device_subject("host-1"), cb=agent)
    answer = await call_device(
        gateway_on(bus, nats_url), "host-1", DeviceCall(serial="s1", kind="screenshot")
    )
    assert answer.meta.content_type == "image/png" and answer.meta.chunks == 11
    assert await answer.whole() == body
