"""Record = reality against a stand-in agent on the real bus and database: runs fenced by
the agent's process, late reports after every way the scheduler gives up, reports that
forge their sender, the actor of every event, and leases on one clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from fleet_contracts.agent import AgentStartedReport, DeviceInfo, TaskCompletedReport
from fleet_contracts.codes import TaskSource
from fleet_contracts.commands import CreateTasks
from fleet_contracts.queries import GetTask, ListDevices, TaskEvents
from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.subjects import report_subject
from fleet_runtime.bus import headers_for
from fleet_scheduler import dispatch
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus, FakeAgent, eventually, wait_devices


def create(actor: str = "ops-key", **body: Any) -> CreateTasks:
    return CreateTasks(
        request=CreateTaskRequest.model_validate({"script_name": "post", **body}),
        source=TaskSource.API,
        actor=actor,
    )


async def one_task(bus: Bus, serial: str) -> int:
    result = await bus.command(create(serials=[serial]))
    assert result.code == 0, result.message
    task_id: int = result.data["task_ids"][0]
    return task_id


async def view(bus: Bus, task_id: int) -> dict[str, Any]:
    data: dict[str, Any] = (await bus.query(GetTask(task_id=task_id))).data
    return data


async def until_status(bus: Bus, task_id: int, status: int, within: float = 10) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        seen = await view(bus, task_id)
        return seen if seen["status"] == status else None

    try:
        found: dict[str, Any] = await eventually(
            check, within=within, what=f"task {task_id} status {status}"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; task is {await view(bus, task_id)}") from None
    return found


async def history(bus: Bus, task_id: int) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = (await bus.query(TaskEvents(task_id=task_id))).data
    return data


async def busy(bus: Bus, serial: str) -> bool:
    devices = {d["serial"]: d for d in (await bus.query(ListDevices())).data["devices"]}
    return bool(devices[serial]["busy"])


async def test_a_task_failed_by_the_lease_that_its_agent_completes_ends_completed(
    bus: Bus, settings: SchedulerSettings
) -> None:
    settings.scheduler_agent_lease_seconds = 3
    async with Scheduler(settings):
        agent = FakeAgent(bus, "host-3", ["p1"])
        agent.auto_start = True
        await agent.start()
        await wait_devices(bus, 1)
        tid = await one_task(bus, "p1")
        await until_status(bus, tid, 1)
        agent.beating = False  # a cut link: the phone goes on with the script
        lost = await until_status(bus, tid, 3)
        assert lost["reason"].startswith("agent lost: host-3 sent no heartbeat")
        agent.beating = True  # back, and its heartbeat says the phone runs the task
        await until_status(bus, tid, 1)
        assert await busy(bus, "p1")
        await agent.complete(agent.run_for(tid))
        done = await until_status(bus, tid, 2)
        assert done["reason"] in (None, "")
        await eventually(lambda: _not(busy(bus, "p1")), what="phone free after the end")
        await agent.close()
        story = await history(bus, tid)
    kinds = [(e["type"], e["actor"]) for e in story]
    assert kinds[0] == ("task.created", "ops-key")
    assert ("task.dispatched", "scheduler") in kinds
    failed = next(e for e in story if e["type"] == "task.failed")
    assert failed["data"]["lost"] is True and failed["actor"] == "scheduler"
    late = [e for e in story if e["type"] == "task.report_late"]
    assert late and late[0]["data"]["ended_by"] == "lost"
    assert kinds[-1] == ("task.completed", "agent:host-3")


async def _not(value: Any) -> bool:
    return not await value


async def test_an_agent_restart_fails_earlier_runs_and_their_late_end_wins(
    bus: Bus, settings: SchedulerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "RUN_REQUEST_TIMEOUT", 0.3)
    monkeypatch.setattr(dispatch, "RESEND_AFTER_SECONDS", 0.5)
    async with Scheduler(settings):
        agent = FakeAgent(bus, "h1", ["s1", "s2"])
        agent.incarnation = "first"
        agent.auto_start = True
        await agent.start()
        await wait_devices(bus, 2)
        ran = await one_task(bus, "s1")
        await until_status(bus, ran, 1)
        agent.answer = False  # the next run is never answered (the process is dying)
        unanswered = await one_task(bus, "s2")
        await eventually(lambda: _has(agent, unanswered), what="second run sent")
        assert agent.run_for(unanswered).incarnation == "first"
        # A new process of the agent announces itself; it holds none of the old runs.
        agent.incarnation = "second"
        agent.holding.clear()
        await bus.report(
            AgentStartedReport(
                agent_id="h1",
                host="host-h1",
                incarnation="second",
                devices=[DeviceInfo(serial="s1"), DeviceInfo(serial="s2")],
            )
        )
        for tid in (ran, unanswered):
            failed = await until_status(bus, tid, 3)
            assert failed["reason"] == "agent lost: h1 restarted"
        sent = len([r for r in agent.runs if r.task_id == unanswered])
        agent.answer = True
        await asyncio.sleep(1.5)  # resends would have gone out by now
        assert len([r for r in agent.runs if r.task_id == unanswered]) == sent
        # The first run's end was reported by the old process after all.
        await agent.complete(agent.run_for(ran))
        await until_status(bus, ran, 2)
        await agent.close()
        story = [e["type"] for e in await history(bus, ran)]
    assert story[-3:] == ["task.failed", "task.report_late", "task.completed"]


async def _has(agent: FakeAgent, task_id: int) -> bool:
    return any(r.task_id == task_id for r in agent.runs)


async def test_a_running_task_its_agent_does_not_hold_fails_then_its_end_reconciles(
    bus: Bus, settings: SchedulerSettings
) -> None:
    settings.scheduler_agent_lease_seconds = 3
    async with Scheduler(settings):
        agent = FakeAgent(bus, "forgetful", ["f1"])
        agent.auto_start = True
        await agent.start()
        await wait_devices(bus, 1)
        tid = await one_task(bus, "f1")
        await until_status(bus, tid, 1)
        agent.holds_runs = False  # its outcome report aged out; its heartbeats hold nothing
        failed = await until_status(bus, tid, 3)
        assert failed["reason"] == "agent lost: forgetful no longer runs it and reported no end"
        await eventually(lambda: _not(busy(bus, "f1")), what="phone free")
        await agent.complete(agent.run_for(tid))
        await until_status(bus, tid, 2)
        await agent.close()


async def test_a_report_whose_subject_names_another_agent_is_refused(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    agent.auto_start = True
    tid = await one_task(bus, "device_serial_1")
    await until_status(bus, tid, 1)
    run = agent.run_for(tid)
    forged = TaskCompletedReport(agent_id="a1", task_id=tid, dispatch_id=run.dispatch_id)
    # Sent by host "intruder" on its own subject, the body claiming to be a1.
    await bus.js.publish(
        report_subject("intruder", "task.completed"), forged.to_bytes(), headers=headers_for(forged)
    )

    async def refused() -> Any:
        return await db.fetchrow(
            "SELECT * FROM refused_reports WHERE message_id = $1", forged.message_id
        )

    row = await eventually(refused, what="forged report refused")
    assert row["agent_id"] == "a1" and "intruder" in row["reason"]
    assert (await view(bus, tid))["status"] == 1
    assert "task.completed" not in [e["type"] for e in await history(bus, tid)]


def offset_clock(seconds: float, apart: asyncio.Event) -> Any:
    """The real time, `seconds` off once `apart` is set."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds if apart.is_set() else 0)


async def test_two_schedulers_with_clocks_30s_apart_neither_lose_nor_expire_early(
    bus: Bus, settings: SchedulerSettings
) -> None:
    settings.scheduler_agent_lease_seconds = 3
    settings.scheduler_start_timeout_seconds = 8
    other = settings.model_copy(update={"scheduler_id": "behind", "scheduler_seed": 8})
    began = time.monotonic()
    # The clocks part once the runs are sent: due times are judged on the clock of the
    # scheduler holding the task's partition (README "One clock"), so before that a
    # task created on the clock ahead could wait out the skew on the one behind.
    apart = asyncio.Event()
    async with (
        Scheduler(settings, clock=offset_clock(15, apart)),
        Scheduler(other, clock=offset_clock(-15, apart)),
    ):
        agent = FakeAgent(bus, "steady", ["c1", "c2"])
        agent.auto_start = False
        # c1's run is lost before it starts: were it in the heartbeats, the phone would
        # be running it, and the task failed by the start timeout would be running
        # again within a beat (`liveness.reconcile_runs`), with two schedulers often
        # before the check below could see it failed.
        agent.dropped = {"c1"}
        await agent.start()
        await wait_devices(bus, 2)
        waiting = await one_task(bus, "c1")
        await eventually(lambda: _has(agent, waiting), what="run sent")
        starting = await one_task(bus, "c2")
        await eventually(lambda: _has(agent, starting), what="second run sent")
        apart.set()
        await agent.started(agent.run_for(starting))
        await until_status(bus, starting, 1)
        # Past the lease after the schedulers' start-up grace (one lease), and 30 s past
        # either clock's idea of the start timeout.
        await asyncio.sleep(max(1.5, began + 3 + 1.5 - time.monotonic()))
        assert (await view(bus, waiting))["status"] == 0
        assert (await view(bus, starting))["status"] == 1
        devices = (await bus.query(ListDevices())).data["devices"]
        assert all(d["online"] for d in devices)
        # ... and on the database's clock the start timeout does come.
        expired = await until_status(bus, waiting, 3, within=30)
        assert expired["reason"] == "agent steady never confirmed start"
        assert (await view(bus, starting))["status"] == 1
        await agent.close()
