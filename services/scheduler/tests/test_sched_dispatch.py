"""Dispatch against a stand-in agent on the bus: runs, stops, refusals, lost agents,
start_time and intervals under a fake clock, and two schedulers sharing the work."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from fleet_contracts.agent import (
    AgentReply,
    AgentStartedReport,
    DeviceConnectedReport,
    DeviceDisconnectedReport,
    DeviceInfo,
    ReportBatch,
    RunBatchReply,
    RunTask,
    TaskCompletedReport,
    TaskStartedReport,
)
from fleet_contracts.codes import TaskSource
from fleet_contracts.commands import CreateTasks, StopTask
from fleet_contracts.queries import GetStats, GetTask, ListDevices
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler.app import Scheduler
from fleet_scheduler.dispatch import Claim, batch_replies, batches
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus, FakeAgent, FakeClock, eventually, wait_devices


def create(**body: Any) -> CreateTasks:
    return CreateTasks(
        request=CreateTaskRequest.model_validate({"script_name": "post", **body}),
        source=TaskSource.API,
    )


async def task(bus: Bus, task_id: int) -> dict[str, Any]:
    data: dict[str, Any] = (await bus.query(GetTask(task_id=task_id))).data
    return data


async def until_status(bus: Bus, task_id: int, status: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await task(bus, task_id)
        return view if view["status"] == status else None

    result: dict[str, Any] = await eventually(check, what=f"task {task_id} status {status}")
    return result


async def _events(db: asyncpg.Connection, ids: list[int]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT type, recorded_at FROM events WHERE stream_id = ANY($1::text[]) ORDER BY position",
        [f"task-{i}" for i in ids],
    )
    return rows


async def requeued(db: asyncpg.Connection, task_id: int) -> None:
    """Wait until the task's run has come back refused (a TaskRequeued in its stream)."""

    async def seen() -> bool:
        return "task.requeued" in [r["type"] for r in await _events(db, [task_id])]

    await eventually(seen, what=f"task {task_id} requeued")


async def ids_of(bus: Bus, **body: Any) -> list[int]:
    result = await bus.command(create(**body))
    assert result.code == 0, result.message
    ids: list[int] = result.data["task_ids"]
    return ids


async def test_run_to_completion_one_task_per_device(bus: Bus, agent: FakeAgent) -> None:
    first, second = await ids_of(bus, serials=["device_serial_1"]) + await ids_of(
        bus, serials=["device_serial_1"]
    )
    await eventually(lambda: _async(len(agent.runs) == 1), what="first run sent")
    assert (await task(bus, first))["status"] == 0  # dispatched: running only once started
    run = agent.run_for(first)
    await agent.started(run)
    view = await until_status(bus, first, 1)
    assert view["agent_id"] == "a1" and view["started_at"]
    second_view = await task(bus, second)
    assert second_view["reason"] == f"device busy with task {first}"
    await agent.complete(run)
    await until_status(bus, first, 2)
    await eventually(lambda: _async(len(agent.runs) == 2), what="second run after the first")
    assert agent.runs[1].task_id == second
    stats = (await bus.query(GetStats())).data
    assert stats["completed"] == 1 and stats["total"] == 2


async def test_a_batch_of_reports_is_applied_in_order(bus: Bus, agent: FakeAgent) -> None:
    (task_id,) = await ids_of(bus, serials=["device_serial_1"])
    await eventually(lambda: _async(len(agent.runs) == 1), what="run sent")
    run = agent.run_for(task_id)
    reports = [
        TaskStartedReport(
            agent_id="a1", task_id=task_id, dispatch_id=run.dispatch_id, serial=run.serial
        ),
        TaskCompletedReport(agent_id="a1", task_id=task_id, dispatch_id=run.dispatch_id),
    ]
    await bus.report(ReportBatch(agent_id="a1", reports=reports))
    view = await until_status(bus, task_id, 2)
    assert view["started_at"] and view["finished_at"]


async def test_a_report_naming_another_phone_than_its_tasks_still_ends_that_task(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    # Agents name the phone in every task report; the batch locks that phone's partition
    # only. A report naming the wrong phone (device_serial_2, partition 2, for a task on
    # device_serial_1, partition 5) is applied again with every partition locked.
    (task_id,) = await ids_of(bus, serials=["device_serial_1"])
    await eventually(lambda: _async(len(agent.runs) == 1), what="run sent")
    run = agent.run_for(task_id)
    await agent.started(run)
    await until_status(bus, task_id, 1)
    await bus.report(
        TaskCompletedReport(
            agent_id="a1", task_id=task_id, dispatch_id=run.dispatch_id, serial="device_serial_2"
        )
    )
    view = await until_status(bus, task_id, 2)
    assert view["finished_at"]
    partitions = await db.fetch(
        "SELECT DISTINCT partition FROM events WHERE stream_id = $1", f"task-{task_id}"
    )
    assert [r["partition"] for r in partitions] == [5]


async def test_a_batch_of_reports_split_over_transactions_keeps_its_order(
    bus: Bus, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_scheduler import reports

    monkeypatch.setattr(reports, "REPORTS_PER_TRANSACTION", 1)
    monkeypatch.setattr(reports, "REPORTS_PER_QUIET_TRANSACTION", 1)
    ids = await ids_of(bus, serials=["device_serial_1", "device_serial_2"])
    await eventually(lambda: _async(len(agent.runs) == 2), what="runs sent")
    batch = []
    for tid in ids:
        run = agent.run_for(tid)
        batch += [
            TaskStartedReport(
                agent_id="a1", task_id=tid, dispatch_id=run.dispatch_id, serial=run.serial
            ),
            TaskCompletedReport(agent_id="a1", task_id=tid, dispatch_id=run.dispatch_id),
        ]
    await bus.report(ReportBatch(agent_id="a1", reports=batch))
    for tid in ids:
        view = await until_status(bus, tid, 2)
        assert view["started_at"] and view["finished_at"]


async def test_ready_devices_go_in_one_run_batch_per_agent(bus: Bus, agent: FakeAgent) -> None:
    other = FakeAgent(bus, "a2", [f"b{n}" for n in range(1, 5)])
    await other.start()
    await wait_devices(bus, 7)
    agent.auto_start = other.auto_start = True
    serials = [f"device_serial_{n}" for n in (1, 2, 3)] + other.serials
    ids = await ids_of(bus, serials=serials)
    for tid in ids:
        await until_status(bus, tid, 1)
    # One claim, one request per agent carrying all of its runs; nothing sent singly.
    assert [sorted(r.serial for r in b) for b in agent.batches] == [serials[:3]]
    assert [sorted(r.serial for r in b) for b in other.batches] == [sorted(other.serials)]
    assert len(agent.runs) == 3 and len(other.runs) == 4
    await other.close()


async def test_a_refused_run_in_a_batch_backs_off_while_the_others_start(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection, clock: FakeClock
) -> None:
    agent.auto_start = True
    agent.refuse_serials = {"device_serial_2": "device busy with task 12"}
    first, refused, third = await ids_of(
        bus, serials=["device_serial_1", "device_serial_2", "device_serial_3"]
    )
    await until_status(bus, first, 1)
    await until_status(bus, third, 1)

    await requeued(db, refused)
    view = await task(bus, refused)
    assert (view["status"], view["reason"]) == (0, "device busy with task 12")
    assert len(agent.batches) == 1 and len(agent.batches[0]) == 3
    agent.refuse_serials = {}
    clock.advance(seconds=3)  # past the back-off
    await until_status(bus, refused, 1)
    assert len(agent.batches) == 2 and [r.task_id for r in agent.batches[1]] == [refused]


async def test_a_create_on_idle_phones_is_answered_with_its_tasks_dispatched(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    ids = await ids_of(bus, serials=["device_serial_1", "device_serial_2"])
    # Read as soon as the answer is in: the creates and their dispatches were committed
    # together (one transaction's time), before the answer left.
    rows = await _events(db, ids)
    assert sorted(r["type"] for r in rows) == ["task.created"] * 2 + ["task.dispatched"] * 2
    assert len({r["recorded_at"] for r in rows}) == 1
    await eventually(lambda: _async(len(agent.runs) == 2), what="runs sent")
    assert len(agent.batches) == 1


async def test_a_create_leaves_a_phone_cooling_off_after_a_refusal_alone(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection, clock: FakeClock
) -> None:
    agent.refuse = "device busy with task 12"
    [refused] = await ids_of(bus, serials=["device_serial_3"])

    await requeued(db, refused)
    agent.refuse = None
    agent.auto_start = True
    [later] = await ids_of(bus, serials=["device_serial_3"])
    assert [r["type"] for r in await _events(db, [later])] == ["task.created"]
    clock.advance(seconds=3)  # past the back-off
    await until_status(bus, later, 1)  # due first: the refused one was put off


async def test_a_claim_that_fails_inside_a_create_leaves_the_create_whole(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_scheduler import dispatch, task_leases

    equip = task_leases.equip
    calls = 0

    async def fails_once(uow: Any, claims: list[Claim]) -> list[Claim]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("lease table unreadable")
        return await equip(uow, claims)

    monkeypatch.setattr(task_leases, "equip", fails_once)
    assert vars(dispatch)["task_leases"] is task_leases  # the module the claim calls
    result = await bus.command(create(serials=["device_serial_1"]))
    assert result.code == 0, result.message
    [tid] = result.data["task_ids"]
    # The create stands without the dispatch its transaction tried; the dispatcher
    # claims the task on its own, in a later transaction.
    await eventually(lambda: _async(len(agent.runs) == 1), what="run sent")
    rows = await _events(db, [tid])
    assert [r["type"] for r in rows] == ["task.created", "task.dispatched"]
    assert rows[0]["recorded_at"] < rows[1]["recorded_at"]


async def test_an_agent_that_answers_no_batches_gets_its_runs_one_at_a_time(
    bus: Bus, scheduler: Scheduler
) -> None:
    old = FakeAgent(bus, "old", ["o1", "o2"])
    old.batched = False  # an agent process from before RunBatch
    await old.start()
    await wait_devices(bus, 2)
    ids = await ids_of(bus, serials=["o1", "o2"])
    for tid in ids:
        await until_status(bus, tid, 1)
    assert sorted(r.task_id for r in old.runs) == sorted(ids)
    await old.close()


def _claim(agent_id: str, task_id: int, caption: str = "") -> Claim:
    run = RunTask(
        task_id=task_id,
        dispatch_id=f"d{task_id}",
        serial=f"s{task_id}",
        script_name="post",
        script_config={"caption": caption},
    )
    return Claim(run, agent_id)


def test_runs_are_grouped_per_agent_and_cut_at_the_bounds() -> None:
    claims = [_claim("a" if n % 2 else "b", n) for n in range(1, 8)]
    groups = batches(claims)
    assert [[c.run.task_id for c in g] for g in groups] == [[1, 3, 5, 7], [2, 4, 6]]
    assert [[c.run.task_id for c in g] for g in batches(claims, max_runs=3)] == [
        [1, 3, 5],
        [7],
        [2, 4, 6],
    ]
    big = [_claim("a", n, "字" * 4000) for n in range(1, 6)]
    size = len(big[0].run.to_bytes())
    cut = batches(big, max_bytes=2 * size)
    assert [len(g) for g in cut] == [2, 2, 1]
    assert [len(g) for g in batches(big, max_bytes=size // 2)] == [1] * 5  # one alone, still


def test_batch_replies_are_one_per_run() -> None:
    ok, no = AgentReply(accepted=True), AgentReply(accepted=False, reason="x")
    raw = RunBatchReply(replies=[ok, no]).model_dump_json().encode()
    assert batch_replies(raw, 2) == [ok, no]
    assert batch_replies(raw, 3) is None  # a short answer confirms nothing
    whole = RunBatchReply(replies=[no]).model_dump_json().encode()
    assert batch_replies(whole, 3) == [no, no, no]  # the request refused as a whole
    assert batch_replies(b"not json", 1) is None


async def _async(value: Any) -> Any:
    return value


async def test_stop_running_task_keeps_device_busy_until_the_agent_ends_it(
    bus: Bus, agent: FakeAgent
) -> None:
    agent.auto_start = True
    running, waiting = await ids_of(bus, serials=["device_serial_2"]) + await ids_of(
        bus, serials=["device_serial_2"]
    )
    await until_status(bus, running, 1)
    assert (await bus.command(StopTask(task_id=running))).code == 0
    view = await task(bus, running)
    assert (view["status"], view["reason"]) == (3, "stopped")
    await eventually(lambda: _async(agent.stops), what="StopRun delivered")
    assert agent.stops[0].task_id == running
    devices = {d["serial"]: d for d in (await bus.query(ListDevices())).data["devices"]}
    assert devices["device_serial_2"]["busy"] is True
    assert len(agent.runs) == 1
    # The agent's own report of the stopped script frees the device; the task stays failed.
    await agent.fail(agent.run_for(running), "stopped", stopped=True)
    await until_status(bus, waiting, 1)
    assert (await task(bus, running))["reason"] == "stopped"


async def test_refused_run_goes_back_to_pending_with_the_agents_reason(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection, clock: FakeClock
) -> None:
    agent.refuse = "device busy with task 12"
    [tid] = await ids_of(bus, serials=["device_serial_3"])

    await requeued(db, tid)
    view = await task(bus, tid)
    assert (view["status"], view["reason"]) == (0, "device busy with task 12")
    agent.refuse = None
    agent.auto_start = True
    clock.advance(seconds=3)  # past the back-off
    await until_status(bus, tid, 1)


async def test_agent_that_stops_heartbeating_is_lost(
    bus: Bus, settings: SchedulerSettings, clock: FakeClock
) -> None:
    # Leases run on the database's clock: a real (short) silence, not a fake clock's.
    settings.scheduler_agent_lease_seconds = 2.5
    async with Scheduler(settings, clock=clock):
        agent = FakeAgent(bus, "host-3", ["p1", "p2"])
        agent.auto_start = True
        await agent.start()
        await wait_devices(bus, 2)
        [tid] = await ids_of(bus, serials=["p1"])
        await until_status(bus, tid, 1)
        agent.beating = False
        view = await until_status(bus, tid, 3)
        assert view["reason"].startswith("agent lost: host-3 sent no heartbeat for ")
        devices = (await bus.query(ListDevices())).data["devices"]
        assert [d["online"] for d in devices] == [False, False]
        # Beats again: its phones come back and new work flows to them.
        agent.beating = True
        await wait_devices(bus, 2)
        [again] = await ids_of(bus, serials=["p2"])
        await until_status(bus, again, 1)
        await agent.close()


async def test_start_never_confirmed_fails_with_the_agent_named(
    bus: Bus, settings: SchedulerSettings, clock: FakeClock
) -> None:
    settings.scheduler_start_timeout_seconds = 1  # on the database's clock
    async with Scheduler(settings, clock=clock):
        agent = FakeAgent(bus, "slow", ["q1"])
        agent.auto_start = False
        await agent.start()
        await wait_devices(bus, 1)
        [tid] = await ids_of(bus, serials=["q1"])
        await eventually(lambda: _async(agent.runs), what="run sent")
        view = await until_status(bus, tid, 3)
        assert view["reason"] == "agent slow never confirmed start"
        await agent.close()


async def test_start_time_holds_a_task_until_its_time(
    bus: Bus, agent: FakeAgent, clock: FakeClock
) -> None:
    agent.auto_start = True
    at = clock.now + timedelta(minutes=30)
    hhmm = at.strftime("%H:%M")
    [held] = await ids_of(bus, serials=["device_serial_1"], start_time=hhmm)
    [free] = await ids_of(bus, serials=["device_serial_2"])
    await until_status(bus, free, 1)  # a dispatch pass ran after both were created
    view = await task(bus, held)
    assert view["status"] == 0
    assert view["reason"] == f"start_time {hhmm} UTC"
    assert [r.task_id for r in agent.runs] == [free]
    clock.advance(minutes=31)
    await until_status(bus, held, 1)


async def test_interval_spaces_tasks_on_one_device(
    bus: Bus, agent: FakeAgent, clock: FakeClock, db: asyncpg.Connection
) -> None:
    agent.auto_start = True
    [first] = await ids_of(bus, serials=["device_serial_1"])
    await until_status(bus, first, 1)
    [second] = await ids_of(bus, serials=["device_serial_1"], min_interval=10, max_interval=10)
    await agent.complete(agent.run_for(first))
    await until_status(bus, first, 2)

    async def rescheduled() -> dict[str, Any] | None:
        view = await task(bus, second)
        return view if view["reason"] == f"interval 10m after task {first}" else None

    view = await eventually(rescheduled, what="interval drawn")
    finished = await db.fetchval("SELECT finished_at FROM tasks WHERE id = $1", first)
    assert view["status"] == 0
    due = await db.fetchval("SELECT due_at FROM tasks WHERE id = $1", second)
    assert due - finished == timedelta(minutes=10)
    assert len(agent.runs) == 1
    clock.advance(minutes=11)
    await until_status(bus, second, 1)


async def test_two_schedulers_never_dispatch_a_task_twice(
    bus: Bus, settings: SchedulerSettings
) -> None:
    other = settings.model_copy(update={"scheduler_id": "second", "scheduler_seed": 8})
    async with Scheduler(settings), Scheduler(other):
        agent = FakeAgent(bus, "shared", [f"d{n}" for n in range(4)])
        agent.auto_start = True
        agent.auto_complete = True
        await agent.start()
        await wait_devices(bus, 4)
        ids: list[int] = []
        for _ in range(10):
            ids += await ids_of(bus, serials=[f"d{n}" for n in range(4)])

        async def all_done() -> bool:
            return bool((await bus.query(GetStats())).data["completed"] == len(ids))

        await eventually(all_done, within=30, what="all tasks completed")
        counts = Counter(r.task_id for r in agent.runs)
        assert sorted(counts) == sorted(ids)
        assert set(counts.values()) == {1}
        await agent.close()


async def test_unplugged_phone_fails_its_task_and_holds_new_work_until_replugged(
    bus: Bus, agent: FakeAgent
) -> None:
    agent.auto_start = True
    [tid] = await ids_of(bus, serials=["device_serial_3"])
    await until_status(bus, tid, 1)
    agent.serials.remove("device_serial_3")  # it no longer lists the phone in heartbeats
    await agent.fail(agent.run_for(tid), "device disconnected")
    await bus.report(DeviceDisconnectedReport(agent_id="a1", serial="device_serial_3"))
    view = await until_status(bus, tid, 3)
    assert view["reason"] == "device disconnected"
    [later] = await ids_of(bus, serials=["device_serial_3"])

    async def offline() -> bool:
        return bool((await task(bus, later))["reason"] == "device offline")

    await eventually(offline, what="waits for the device")
    await bus.report(
        DeviceConnectedReport(
            agent_id="a1", host="host-a1", device=DeviceInfo(serial="device_serial_3")
        )
    )
    await until_status(bus, later, 1)


async def test_agent_restart_fails_the_runs_it_had(bus: Bus, agent: FakeAgent) -> None:
    agent.auto_start = True
    [tid] = await ids_of(bus, serials=["device_serial_1"])
    await until_status(bus, tid, 1)
    await bus.report(
        AgentStartedReport(
            agent_id="a1",
            host="host-a1",
            devices=[DeviceInfo(serial=f"device_serial_{n}", model="Pixel") for n in (1, 2, 3)],
        )
    )
    view = await until_status(bus, tid, 3)
    assert view["reason"] == "agent lost: a1 restarted"
    [after] = await ids_of(bus, serials=["device_serial_1"])
    await until_status(bus, after, 1)


async def test_unanswered_run_is_sent_again_with_the_same_dispatch(
    bus: Bus, agent: FakeAgent
) -> None:
    agent.answer = False  # as if the request was lost, or the scheduler died before sending
    [tid] = await ids_of(bus, serials=["device_serial_2"])
    await eventually(lambda: _async(agent.runs), what="first RunTask")
    agent.answer = True
    agent.auto_start = True
    await until_status(bus, tid, 1)
    assert {r.dispatch_id for r in agent.runs} == {agent.runs[0].dispatch_id}


async def test_a_run_its_agent_accepted_is_not_sent_again(
    bus: Bus, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_scheduler import dispatch

    monkeypatch.setattr(dispatch, "RESEND_AFTER_SECONDS", 0.2)
    [tid] = await ids_of(bus, serials=["device_serial_2"])  # accepted, start not reported
    await eventually(lambda: _async(agent.runs), what="run sent")
    await asyncio.sleep(6)  # past the first resend pass (5 s after start), and more
    assert [r.task_id for r in agent.runs] == [tid]
    assert (await task(bus, tid))["status"] == 0


async def test_phone_held_for_a_stop_nobody_reports_is_released(
    bus: Bus, settings: SchedulerSettings, clock: FakeClock
) -> None:
    settings.scheduler_start_timeout_seconds = 1
    async with Scheduler(settings, clock=clock):
        agent = FakeAgent(bus, "quiet", ["z1"])
        agent.auto_start = False  # accepts, then never reports anything
        agent.holds_runs = False  # and its heartbeats say the phone runs nothing
        await agent.start()
        await wait_devices(bus, 1)
        first, second = await ids_of(bus, serials=["z1"]) + await ids_of(bus, serials=["z1"])
        await eventually(lambda: _async(agent.runs), what="first run")
        assert (await bus.command(StopTask(task_id=first))).code == 0
        await eventually(lambda: _async(len(agent.runs) == 2), what="phone released")
        assert agent.runs[1].task_id == second
        assert (await task(bus, first))["reason"] == "stopped"
        await agent.close()


def test_reports_go_in_long_transactions_unless_a_command_waits_for_the_locks() -> None:
    from fleet_scheduler.reports import (
        REPORTS_PER_QUIET_TRANSACTION,
        REPORTS_PER_TRANSACTION,
        report_batches,
    )

    quiet, busy = REPORTS_PER_QUIET_TRANSACTION, REPORTS_PER_TRANSACTION
    fetched = list(range(2 * quiet + busy + 7))
    # Asked before each transaction: quiet, then a create arrives, then quiet again.
    waiting = iter([False, True, False, False])
    batches = list(report_batches(fetched, lambda: next(waiting)))
    assert [len(b) for b in batches] == [quiet, busy, quiet, 7]
    assert [r for b in batches for r in b] == fetched  # every report once, in order


async def test_a_phones_next_task_is_dispatched_in_the_transaction_that_ends_its_run(
    bus: Bus, agent: FakeAgent, db: asyncpg.Connection
) -> None:
    first, second = await ids_of(bus, serials=["device_serial_1"]) + await ids_of(
        bus, serials=["device_serial_1"]
    )
    await eventually(lambda: _async(len(agent.runs) == 1), what="first run sent")
    run = agent.run_for(first)
    await agent.started(run)
    await until_status(bus, first, 1)
    await agent.complete(run)
    await eventually(lambda: _async(len(agent.runs) == 2), what="second run after the first")
    assert agent.runs[1].task_id == second
    events = {
        (r["type"], i): r["recorded_at"] for i in (first, second) for r in await _events(db, [i])
    }
    # One transaction, one time: the phone did not wait for a claim of its own.
    assert events[("task.dispatched", second)] == events[("task.completed", first)]
