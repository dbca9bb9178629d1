"""A run's outcome survives a NATS outage of any length while the agent runs."""

from __future__ import annotations

import asyncio
import contextlib

from fleet_agent.reports import publish_report
from fleet_contracts.agent import TaskCompletedReport
from fleet_devstack import EmbeddedNats
from fleet_runtime.bus import connect, ensure_streams


async def test_outcome_waits_out_an_outage_then_lands_once(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    report = TaskCompletedReport(agent_id="host-1", task_id=7, dispatch_id="d7")
    stopping = asyncio.Event()

    nats_server.stop()
    sending = asyncio.create_task(
        publish_report(js, report, attempts=2, ack_wait=0.2, until=stopping)
    )
    await asyncio.sleep(2.0)  # far more than two attempts' worth
    assert not sending.done(), "the outcome was given up while the agent still runs"
    nats_server.start()
    assert await asyncio.wait_for(sending, 30) is True
    info = await js.stream_info("REPORTS")
    assert info.state.messages == 1
    await nc.close()


async def test_a_stopping_agent_gives_up_after_its_attempts(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    nats_server.stop()
    stopping = asyncio.Event()
    stopping.set()
    report = TaskCompletedReport(agent_id="host-1", task_id=8, dispatch_id="d8")
    sent = await asyncio.wait_for(
        publish_report(js, report, attempts=2, ack_wait=0.2, until=stopping), 10
    )
    assert sent is False
    # nats-py's close() raises while it is between reconnect attempts; nothing to check.
    with contextlib.suppress(OSError):
        await nc.close()
