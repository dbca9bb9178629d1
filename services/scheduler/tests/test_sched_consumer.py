"""The pull loop acks a fetched batch only once its handling is done."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from fleet_contracts.subjects import COMMANDS
from fleet_scheduler.consumer import pull_loop

from .conftest import Bus, eventually

DURABLE = "test-consumer"


async def test_a_batch_is_acked_after_its_handling_not_before(bus: Bus) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handle(msgs: list[Msg]) -> None:
        started.set()
        await release.wait()

    stopping = asyncio.Event()
    loop = asyncio.create_task(pull_loop(bus.js, COMMANDS.name, DURABLE, handle, stopping, batch=1))
    try:
        await bus.js.publish("cmd.test.one", b"one")
        await asyncio.wait_for(started.wait(), 10)
        info = await bus.js.consumer_info(COMMANDS.name, DURABLE)
        assert info.num_ack_pending == 1
        release.set()

        async def acked() -> bool:
            info = await bus.js.consumer_info(COMMANDS.name, DURABLE)
            return info.num_ack_pending == 0

        await eventually(acked, what="the batch acked after its handling")
    finally:
        release.set()
        stopping.set()
        await asyncio.wait_for(loop, 5)
