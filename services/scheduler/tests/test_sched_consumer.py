"""The pull loop: one batch in hand at a time, or several (COMMANDS), each acked only
once its own handling is done."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from fleet_contracts.subjects import COMMANDS
from fleet_scheduler.consumer import pull_loop

from .conftest import Bus, eventually

DURABLE = "test-consumer"


async def test_a_second_batch_is_handled_while_the_first_is_in_hand(bus: Bus) -> None:
    handled: list[bytes] = []
    second_done = asyncio.Event()

    async def handle(msgs: list[Msg]) -> None:
        handled.extend(m.data for m in msgs)
        if len(handled) == 1:
            # The first batch ends only once the second is through: with one batch in
            # hand at a time this would never be.
            await asyncio.wait_for(second_done.wait(), 10)
        else:
            second_done.set()

    stopping = asyncio.Event()
    loop = asyncio.create_task(
        pull_loop(bus.js, COMMANDS.name, DURABLE, handle, stopping, batch=1, concurrency=2)
    )
    try:
        await bus.js.publish("cmd.test.one", b"one")
        await bus.js.publish("cmd.test.two", b"two")

        async def all_acked() -> bool:
            if len(handled) < 2:
                return False  # the loop may not even have made its consumer yet
            info = await bus.js.consumer_info(COMMANDS.name, DURABLE)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(all_acked, what="both batches handled and acked")
        assert handled == [b"one", b"two"]
    finally:
        stopping.set()
        await asyncio.wait_for(loop, 5)


async def test_a_batch_is_acked_after_its_handling_not_before(bus: Bus) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handle(msgs: list[Msg]) -> None:
        started.set()
        await release.wait()

    stopping = asyncio.Event()
    loop = asyncio.create_task(
        pull_loop(bus.js, COMMANDS.name, DURABLE, handle, stopping, batch=1, concurrency=2)
    )
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
