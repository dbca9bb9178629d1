"""Request/reply whose answer may be larger than one NATS message.

A NATS server refuses any message above its `max_payload` (1 MiB by default). A query
answer can be larger: a page of 100 tasks whose 4,000-character CJK captions are
12 kB each in UTF-8 is 1.2 MB. Rather than raise `max_payload` on every server (the
embedded one, the compose cluster, every leaf node an operator deploys - and NATS
advises against large messages), an answer that does not fit is sent as numbered
parts over the same reply inbox, each part carrying `Fleet-Chunk: <i>/<n>`; the
requester joins them. An answer that fits goes out as one plain message, exactly as
before, so a requester that predates this still reads every small answer.

Both sides are here so the gateway and every query responder share one definition:
`respond` for responders, `request` for requesters. Nothing waits without a deadline:
`request` raises `TimeoutError` (or `IncompleteReply` when some parts came) at the end
at its deadline, and `respond` refuses answers above `MAX_REPLY_BYTES` with
`ReplyTooLarge`, which a responder turns into a short error answer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

HDR_CHUNK = "Fleet-Chunk"
HDR_STATUS = "Status"
NO_RESPONDERS = "503"
# Room for the part's headers inside the server's max_payload.
_HEADROOM = 1024
# No answer a person can use is this large; beyond it the responder says so instead.
MAX_REPLY_BYTES = 64 * 1024 * 1024


class ReplyTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the answer is {size} bytes, above the {limit}-byte limit")
        self.size = size
        self.limit = limit


class IncompleteReply(TimeoutError):
    def __init__(self, subject: str, got: int, expected: int) -> None:
        super().__init__(f"{got} of {expected} parts of the answer to {subject} arrived")
        self.got = got
        self.expected = expected


def part_size(nc: Client) -> int:
    return max(1024, nc.max_payload - _HEADROOM)


Send = Callable[[bytes, dict[str, str] | None], Awaitable[None]]
"""One message of an answer to its requester (data, headers): a publish to the reply
subject, or a NATS micro request's `respond`."""


async def respond(
    nc: Client, reply_to: str, payload: bytes, *, max_bytes: int | None = None
) -> int:
    """Send `payload` to `reply_to`, in parts when it exceeds one message; returns the
    number of messages sent. `max_bytes` defaults to `MAX_REPLY_BYTES`."""

    async def send(data: bytes, headers: dict[str, str] | None) -> None:
        await nc.publish(reply_to, data, headers=headers)

    return await respond_with(send, part_size(nc), payload, max_bytes=max_bytes)


async def respond_with(
    send: Send, size: int, payload: bytes, *, max_bytes: int | None = None
) -> int:
    """`respond` through `send`, in parts of at most `size` bytes (`part_size`)."""
    if max_bytes is None:
        max_bytes = MAX_REPLY_BYTES
    if len(payload) <= size:
        await send(payload, None)
        return 1
    if len(payload) > max_bytes:
        raise ReplyTooLarge(len(payload), max_bytes)
    count = -(-len(payload) // size)
    for i in range(count):
        await send(payload[i * size : (i + 1) * size], {HDR_CHUNK: f"{i + 1}/{count}"})
    return count


def _part(header: str) -> tuple[int, int] | None:
    index, _, total = header.partition("/")
    if not (index.isdigit() and total.isdigit()):
        return None
    i, n = int(index), int(total)
    return (i, n) if 1 <= i <= n else None


class _Inboxes:
    """One wildcard subscription per client that every request's answers arrive on,
    each request under its own token: a subscription per request cost a SUB and an
    UNSUB message to the server per query (as `nc.request` avoids the same way)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = ""
        self.waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._next = 0

    async def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A reply subject and the queue its messages land in; `close` it after."""
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    prefix = self.nc.new_inbox()
                    self._sub = await self.nc.subscribe(f"{prefix}.*", cb=self._route)
                    self.prefix = prefix
        self._next += 1
        token = str(self._next)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.waiting[token] = queue
        return f"{self.prefix}.{token}", queue

    def close(self, subject: str) -> None:
        self.waiting.pop(subject.rpartition(".")[2], None)

    async def _route(self, msg: Msg) -> None:
        queue = self.waiting.get(msg.subject.rpartition(".")[2])
        if queue is not None:  # else its requester gave up: dropped
            queue.put_nowait(msg)


_INBOXES: weakref.WeakKeyDictionary[Client, _Inboxes] = weakref.WeakKeyDictionary()


MAX_ASKS = 3
"""At most this many sends of one hedged request: the hedge must not turn a slow
scheduler's backlog into a storm."""


async def request(
    nc: Client, subject: str, payload: bytes, within: float, *, hedge_after: float | None = None
) -> bytes:
    """The whole answer to `payload` on `subject`, joined from its parts.

    Raises `nats.errors.NoRespondersError` when nobody listens on `subject`,
    `IncompleteReply` when only some parts came within `within` seconds, and `TimeoutError`
    when nothing came.

    With `hedge_after` (for requests that may be asked twice: reads), a request still
    unanswered after that long is sent again, each time on an inbox of its own, up to
    `MAX_ASKS` sends in all, and the first answer to arrive whole is taken; all share
    the one deadline. A queue group hands each send to any responder, so one that took
    the request and died costs `hedge_after`, not the deadline; one that froze (it keeps
    its subscriptions, and its share of the sends) only fails the request if it takes
    every send. Answers are never mixed: each is joined from its own inbox.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    if hedge_after is None:
        return await _ask(nc, subject, payload, within, deadline)
    asks: list[asyncio.Task[bytes]] = []
    failure: BaseException | None = None
    try:
        while True:
            asks.append(asyncio.create_task(_ask(nc, subject, payload, within, deadline)))
            while True:
                pending = {task for task in asks if not task.done()}
                if not pending:
                    assert failure is not None
                    raise failure
                hedge = len(asks) < MAX_ASKS and deadline - loop.time() > hedge_after
                done, _ = await asyncio.wait(
                    pending,
                    timeout=hedge_after if hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break  # no answer yet: ask again
                for task in done:
                    error = task.exception()
                    if error is None:
                        return task.result()
                    if isinstance(error, nats.errors.NoRespondersError):
                        raise error  # nobody listens: asking again will not help
                    failure = failure or error
    finally:
        for task in asks:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # seen: a loser's failure is not reported as lost


async def _ask(nc: Client, subject: str, payload: bytes, within: float, deadline: float) -> bytes:
    loop = asyncio.get_running_loop()
    inboxes = _INBOXES.get(nc)
    if inboxes is None:
        inboxes = _INBOXES[nc] = _Inboxes(nc)
    inbox, queue = await inboxes.open()
    try:
        await nc.publish(subject, payload, reply=inbox)
        parts: dict[int, bytes] = {}
        expected = 0
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                if parts:
                    raise IncompleteReply(subject, len(parts), expected) from None
                raise TimeoutError(f"no answer to {subject} within {within:g}s") from None
            headers = msg.headers or {}
            if headers.get(HDR_STATUS) == NO_RESPONDERS and not msg.data:
                raise nats.errors.NoRespondersError
            found = _part(headers.get(HDR_CHUNK, ""))
            if found is None:
                return msg.data
            index, expected = found
            parts[index] = msg.data
            if len(parts) == expected:
                return b"".join(parts[i] for i in range(1, expected + 1))
    finally:
        inboxes.close(inbox)
