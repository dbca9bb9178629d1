"""A durable pull consumer loop: fetch a batch, handle it, then ack each message.

The handler commits before it returns, so the ack always follows the commit; a
message whose handling failed for an outside reason (database away) is nak'ed with
a delay and comes back. The subscription is re-created after errors, since a NATS
restart without state may have lost the consumer.

The ack wait is short (`ACK_WAIT_SECONDS`): a batch fetched by a scheduler that is then
killed comes back to the others after it, not after half a minute (with a thousand
phones, one fetch of REPORTS holds reports of most of them: every one of those phones
looked busy until then). While a batch is being handled, its messages are marked in
progress every third of the wait, so a slow transaction is not redelivered meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fleet_contracts.subjects import ALL_STREAMS, StreamSpec
from fleet_runtime.bus import ensure_durable, ensure_streams
from fleet_runtime.failpoints import failpoint

log = structlog.get_logger(__name__)

ACK_WAIT_SECONDS = 5.0


async def pull_loop(
    js: JetStreamContext,
    stream: str,
    durable: str,
    handle: Callable[[list[Msg]], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    batch: int = 64,
    streams: tuple[StreamSpec, ...] = ALL_STREAMS,
    replicas: int = 1,
) -> None:
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,
        max_ack_pending=10_000,
    )
    while not stopping.is_set():
        try:
            await ensure_streams(js, streams, replicas=replicas)
            await ensure_durable(js, stream, config)
            sub = await js.pull_subscribe_bind(durable, stream=stream)
        except Exception as exc:
            log.warning("consumer.subscribe_failed", durable=durable, error=str(exc))
            await _pause(stopping, 1.0)
            continue
        try:
            while not stopping.is_set():
                try:
                    msgs = await sub.fetch(batch, timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                if stopping.is_set():
                    return
                keeping = asyncio.create_task(_in_progress(msgs, ACK_WAIT_SECONDS / 3))
                try:
                    await handle(msgs)
                except Exception as exc:
                    log.exception("consumer.handle_failed", durable=durable, error=str(exc))
                    for msg in msgs:
                        await msg.nak(delay=1.0)
                    continue
                finally:
                    keeping.cancel()
                failpoint(f"{stream.lower()}.after_commit")
                for msg in msgs:
                    await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("consumer.fetch_failed", durable=durable, error=str(exc))
            await _pause(stopping, 1.0)
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("consumer.unsubscribe_failed", error=str(exc))


async def _in_progress(msgs: list[Msg], period: float) -> None:
    """Tell JetStream every `period` that `msgs` are still being handled."""
    while True:
        await asyncio.sleep(period)
        await asyncio.gather(*(msg.in_progress() for msg in msgs), return_exceptions=True)


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
