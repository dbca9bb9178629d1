"""Progress is throttled: the latest step wins, nothing lands after the outcome."""

from __future__ import annotations

import asyncio

from fleet_agent.progress import ProgressThrottle
from fleet_contracts.agent import TaskProgressReport


def step(name: str) -> TaskProgressReport:
    return TaskProgressReport(agent_id="a", task_id=1, dispatch_id="d", step=name)


async def test_a_burst_sends_the_first_step_and_then_the_latest() -> None:
    sent: list[str] = []

    def send(report: TaskProgressReport) -> None:
        sent.append(report.step)

    throttle = ProgressThrottle(send, interval=0.2)
    for name in ("push", "scan", "open", "caption"):
        throttle.report(lambda name=name: step(name))
    assert sent == ["push"]
    await asyncio.sleep(0.3)
    # A long step after a burst still shows: the held step goes out on its own.
    assert sent == ["push", "caption"]
    throttle.report(lambda: step("upload"))
    assert sent == ["push", "caption"]
    await asyncio.sleep(0.3)
    assert sent == ["push", "caption", "upload"]


async def test_nothing_held_is_sent_after_the_run_ends() -> None:
    sent: list[str] = []

    def send(report: TaskProgressReport) -> None:
        sent.append(report.step)

    throttle = ProgressThrottle(send, interval=0.2)
    throttle.report(lambda: step("push"))
    throttle.report(lambda: step("post"))
    throttle.close()
    await asyncio.sleep(0.3)
    throttle.report(lambda: step("late"))
    assert sent == ["push"]
