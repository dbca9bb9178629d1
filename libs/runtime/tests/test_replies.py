"""Answers larger than one NATS message travel in parts and arrive whole; what cannot
be sent or did not fully arrive is an error at once, never a silent wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_runtime import replies
from fleet_runtime.bus import connect


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-replies")
    yield client
    await client.close()


async def serve(nc: Client, subject: str, answer: bytes, sent: list[int]) -> None:
    async def cb(msg: Msg) -> None:
        sent.append(await replies.respond(nc, msg.reply, answer))

    await nc.subscribe(subject, cb=cb)


async def test_an_answer_over_max_payload_arrives_whole(nc: Client) -> None:
    answer = "字".encode() * (nc.max_payload // 3 * 3)  # ~3 MiB of CJK text
    assert len(answer) > 2 * nc.max_payload
    sent: list[int] = []
    await serve(nc, "q.big", answer, sent)
    got = await replies.request(nc, "q.big", b"{}", 5)
    assert got == answer
    assert sent == [-(-len(answer) // replies.part_size(nc))]  # it did go in parts


async def test_a_small_answer_is_one_plain_message(nc: Client) -> None:
    sent: list[int] = []
    await serve(nc, "q.small", b'{"code":0}', sent)
    assert await replies.request(nc, "q.small", b"{}", 5) == b'{"code":0}'
    # Old requesters read it as before: nc.request gets the same bytes.
    assert (await nc.request("q.small", b"{}", timeout=5)).data == b'{"code":0}'
    assert sent == [1, 1]


async def test_an_answer_above_the_cap_is_refused_before_anything_is_sent(nc: Client) -> None:
    with pytest.raises(replies.ReplyTooLarge) as err:
        await replies.respond(nc, "_INBOX.x", b"x" * (2 * nc.max_payload), max_bytes=nc.max_payload)
    assert err.value.size == 2 * nc.max_payload


async def test_nobody_listening_is_said_at_once(nc: Client) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await asyncio.wait_for(replies.request(nc, "q.nobody", b"{}", 30), 5)


async def test_a_lost_part_is_an_incomplete_answer_not_a_hang(nc: Client) -> None:
    async def cb(msg: Msg) -> None:
        await nc.publish(msg.reply, b"first", headers={replies.HDR_CHUNK: "1/2"})

    await nc.subscribe("q.lossy", cb=cb)
    with pytest.raises(replies.IncompleteReply) as err:
        await replies.request(nc, "q.lossy", b"{}", 0.5)
    assert (err.value.got, err.value.expected) == (1, 2)


async def test_requests_in_flight_together_each_get_their_own_answer(nc: Client) -> None:
    async def answer(msg: Msg) -> None:
        # Answered out of order: the later requests first.
        await asyncio.sleep(0.001 * (50 - int(msg.data)))
        await replies.respond(nc, msg.reply, b"re " + msg.data)

    async def cb(msg: Msg) -> None:
        asyncio.get_running_loop().create_task(answer(msg))

    await nc.subscribe("q.echo", cb=cb)
    got = await asyncio.gather(
        *(replies.request(nc, "q.echo", str(i).encode(), 5) for i in range(50))
    )
    assert got == [f"re {i}".encode() for i in range(50)]


async def test_a_request_swallowed_by_one_responder_is_hedged_to_another(nc: Client) -> None:
    # The responder that takes the first request never answers (it died or froze
    # holding it); the hedge, sent after 0.3 s, reaches one that does.
    took_first = asyncio.Event()
    taken: list[str] = []

    async def swallow(msg: Msg) -> None:
        taken.append("swallowed")
        took_first.set()

    async def live(msg: Msg) -> None:
        taken.append("answered")
        await replies.respond(nc, msg.reply, b"answer")

    gone = await nc.subscribe("q.hedged", queue="schedulers", cb=swallow)
    ask = asyncio.create_task(replies.request(nc, "q.hedged", b"{}", 30, hedge_after=0.3))
    await asyncio.wait_for(took_first.wait(), 5)
    await gone.unsubscribe()
    await nc.subscribe("q.hedged", queue="schedulers", cb=live)
    await nc.flush()
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(ask, 5) == b"answer"
    assert asyncio.get_running_loop().time() - started < 5.0  # the hedge, not the 30 s
    assert taken == ["swallowed", "answered"]


async def test_two_answers_in_parts_are_joined_apart_never_mixed(nc: Client) -> None:
    # The first request's answer: part 1 at once, parts 3 and 2 at 0.4 and 0.5 s. The
    # hedge's (sent at 0.2 s): parts 1 and 2 at once, part 3 a second later. Joined on
    # one inbox they would make B1 B2 A3; each on its own, the first answer is whole first.
    plans = iter(
        [
            [(0.0, 1, b"A1"), (0.4, 3, b"A3"), (0.5, 2, b"A2")],
            [(0.0, 1, b"B1"), (0.0, 2, b"B2"), (1.0, 3, b"B3")],
        ]
    )

    async def answer(reply: str, plan: list[tuple[float, int, bytes]]) -> None:
        waited = 0.0
        for at, index, data in plan:
            await asyncio.sleep(at - waited)
            waited = at
            await nc.publish(reply, data, headers={replies.HDR_CHUNK: f"{index}/3"})

    async def cb(msg: Msg) -> None:
        asyncio.get_running_loop().create_task(answer(msg.reply, next(plans)))

    await nc.subscribe("q.parts", cb=cb)
    got = await replies.request(nc, "q.parts", b"{}", 10, hedge_after=0.2)
    assert got == b"A1A2A3"


async def test_without_an_answer_a_hedged_request_is_sent_a_bounded_number_of_times(
    nc: Client,
) -> None:
    sends: list[bytes] = []

    async def silent(msg: Msg) -> None:
        sends.append(msg.data)

    await nc.subscribe("q.silent", cb=silent)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await replies.request(nc, "q.silent", b"{}", 1.5, hedge_after=0.1)
    # Still the one deadline, and no storm: three sends, not fifteen.
    assert 1.4 < asyncio.get_running_loop().time() - started < 3.0
    assert len(sends) == replies.MAX_ASKS == 3
