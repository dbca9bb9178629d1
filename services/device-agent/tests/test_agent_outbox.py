"""Reports coalesced by the outbox: fewer REPORTS messages than reports, each report
with its own id and in order, batches cut at their bounds, outages waited out once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fleet_agent.outbox import ReportOutbox, cut
from fleet_contracts.agent import (
    AnyReport,
    TaskCompletedReport,
    TaskProgressReport,
    TaskStartedReport,
    parse_reports,
)
from fleet_devstack import EmbeddedNats
from fleet_runtime.bus import connect, ensure_streams


async def _stored(js: Any) -> tuple[int, list[AnyReport]]:
    """(messages on REPORTS, the reports they carry in stream order)."""
    info = await js.stream_info("REPORTS")
    reports: list[AnyReport] = []
    for seq in range(1, int(info.state.last_seq) + 1):
        msg = await js.get_msg("REPORTS", seq=seq)
        reports += parse_reports(msg.data)
    return int(info.state.messages), reports


def _started(task_id: int) -> TaskStartedReport:
    return TaskStartedReport(
        agent_id="host-1", task_id=task_id, dispatch_id=f"d{task_id}", serial=f"s{task_id}"
    )


def test_a_batch_takes_what_fits_and_always_the_first() -> None:
    assert cut([10, 10, 10], max_reports=2, max_bytes=100) == 2
    assert cut([10, 10, 10], max_reports=10, max_bytes=25) == 2
    assert cut([500, 10], max_reports=10, max_bytes=100) == 1  # too big: alone
    assert cut([], max_reports=10, max_bytes=100) == 0


async def test_reports_made_together_go_as_one_message_in_order(
    nats_server: EmbeddedNats,
) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    outbox = ReportOutbox(js, "host-1", window=0.05)
    sent = [_started(n) for n in range(1, 41)]
    progress = TaskProgressReport(agent_id="host-1", task_id=1, dispatch_id="d1", step="open")
    done = TaskCompletedReport(agent_id="host-1", task_id=1, dispatch_id="d1")
    waits = [asyncio.create_task(outbox.send(r)) for r in sent]
    await asyncio.sleep(0)  # each queued its report
    outbox.post(progress)
    waits.append(asyncio.create_task(outbox.send(done)))
    assert all(await asyncio.gather(*waits))
    messages, reports = await _stored(js)
    assert messages == 1
    assert [r.message_id for r in reports] == [r.message_id for r in [*sent, progress, done]]
    await outbox.close()
    await nc.close()


async def test_a_batch_is_cut_at_its_byte_bound(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    one = len(_started(1).to_bytes())
    outbox = ReportOutbox(js, "host-1", window=0.05, max_bytes=10 * one + 5)
    sent = [_started(n) for n in range(1, 26)]
    assert all(await asyncio.gather(*(outbox.send(r) for r in sent)))
    messages, reports = await _stored(js)
    assert messages == 3  # 10 + 10 + 5
    assert [r.message_id for r in reports] == [r.message_id for r in sent]
    await outbox.close()
    await nc.close()


async def test_a_batch_waits_out_an_outage_then_lands_once(nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    outbox = ReportOutbox(js, "host-1", window=0.05, ack_wait=0.2)
    stopping = asyncio.Event()
    nats_server.stop()
    outcomes = [
        TaskCompletedReport(agent_id="host-1", task_id=n, dispatch_id=f"d{n}") for n in (1, 2)
    ]
    sending = asyncio.gather(*(outbox.send(r, attempts=2, until=stopping) for r in outcomes))
    await asyncio.sleep(2.0)  # far more than two attempts' worth
    assert not sending.done(), "the outcomes were given up while the agent still runs"
    nats_server.start()
    assert await asyncio.wait_for(sending, 30) == [True, True]
    messages, reports = await _stored(js)
    assert messages == 1 and [r.message_id for r in reports] == [r.message_id for r in outcomes]
    await outbox.close()
    await nc.close()


async def test_a_stopping_agent_gives_up_its_batches_in_bounded_time(
    nats_server: EmbeddedNats,
) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    outbox = ReportOutbox(js, "host-1", window=0.01, ack_wait=0.2, max_reports=2)
    nats_server.stop()
    stopping = asyncio.Event()
    stopping.set()
    outcomes = [
        TaskCompletedReport(agent_id="host-1", task_id=n, dispatch_id=f"d{n}") for n in range(6)
    ]
    sent = await asyncio.wait_for(
        asyncio.gather(*(outbox.send(r, attempts=2, until=stopping) for r in outcomes)), 10
    )
    assert sent == [False] * 6
    await outbox.close(grace=0)
    with contextlib.suppress(OSError):
        await nc.close()


async def test_progress_is_not_queued_without_bound_while_the_bus_is_away(
    nats_server: EmbeddedNats, monkeypatch: Any
) -> None:
    from fleet_agent import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "MAX_QUEUED_PROGRESS", 5)
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    outbox = ReportOutbox(js, "host-1", window=0.01, ack_wait=0.2)
    nats_server.stop()
    stopping = asyncio.Event()
    outcome = TaskCompletedReport(agent_id="host-1", task_id=1, dispatch_id="d1")
    sending = asyncio.create_task(outbox.send(outcome, attempts=1, until=stopping))
    await asyncio.sleep(0.3)  # the outcome's batch is out, failing
    for n in range(20):
        outbox.post(
            TaskProgressReport(agent_id="host-1", task_id=1, dispatch_id="d1", step=f"s{n}")
        )
    nats_server.start()
    assert await asyncio.wait_for(sending, 30) is True
    await outbox.close(grace=10)  # what was queued goes out first
    _, reports = await _stored(js)
    assert [getattr(r, "step", r.type) for r in reports] == [
        "task.completed",
        *(f"s{n}" for n in range(5)),
    ]
    await nc.close()


async def test_a_report_at_rest_goes_at_once_and_one_while_busy_waits_for_company(
    nats_server: EmbeddedNats,
) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    window = 0.3
    outbox = ReportOutbox(js, "host-1", window=window)
    # At rest: not held for the window (a phone's start report is what a user waits on).
    assert await asyncio.wait_for(outbox.send(_started(1)), window / 2)
    # Busy (a batch just left): the next reports gather for one window, then go together.
    second = asyncio.create_task(outbox.send(_started(2)))
    await asyncio.sleep(window / 3)
    third = asyncio.create_task(outbox.send(_started(3)))
    assert await second and await third
    messages, reports = await _stored(js)
    assert messages == 2
    assert [r.task_id for r in reports] == [1, 2, 3]  # type: ignore[union-attr]
    await outbox.close()
    await nc.close()


async def test_a_lingering_step_is_taken_back_by_its_outcome_and_sent_otherwise(
    nats_server: EmbeddedNats,
) -> None:
    nc = await connect(nats_server.url, "agent-test")
    js = nc.jetstream()
    await ensure_streams(js)
    outbox = ReportOutbox(js, "host-1", window=0.01)

    def step(task_id: int, name: str) -> TaskProgressReport:
        return TaskProgressReport(
            agent_id="host-1", task_id=task_id, dispatch_id=f"d{task_id}", step=name
        )

    # Run 1 ends within the linger: only its outcome is stored.
    outbox.post(step(1, "open app"), linger=0.5)
    assert await outbox.send(TaskCompletedReport(agent_id="host-1", task_id=1, dispatch_id="d1"))
    # Run 2 goes on: its latest step is stored once the linger has passed.
    outbox.post(step(2, "open app"), linger=0.2)
    outbox.post(step(2, "type caption"), linger=0.2)
    # A step of another dispatch of the same task is not the outcome's to take back.
    outbox.post(step(3, "push media"), linger=0.2)
    assert await outbox.send(TaskCompletedReport(agent_id="host-1", task_id=3, dispatch_id="other"))
    await asyncio.sleep(0.5)
    await outbox.close(grace=5)
    _, reports = await _stored(js)
    assert [(r.task_id, getattr(r, "step", r.type)) for r in reports] == [  # type: ignore[union-attr]
        (1, "task.completed"),
        (3, "task.completed"),
        (2, "type caption"),
        (3, "push media"),
    ]
    await nc.close()
