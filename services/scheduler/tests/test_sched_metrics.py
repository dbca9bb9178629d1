"""The scheduler's /metrics, scraped while tasks run against a stand-in agent on the real
bus and database: counters and histograms move by exactly what happened."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from fleet_contracts.agent import AccountsReport
from fleet_contracts.codes import TaskSource
from fleet_contracts.commands import CreateTasks
from fleet_contracts.queries import GetStats
from fleet_contracts.rest import CreateTaskRequest
from fleet_devstack import free_port
from fleet_scheduler import metrics
from fleet_scheduler.app import Scheduler
from fleet_scheduler.context import Context
from fleet_scheduler.settings import SchedulerSettings
from tests.scrape import Scrape, grew, moved, scrape

from .conftest import Bus, FakeAgent, FakeClock, eventually, wait_devices


def create(**body: Any) -> CreateTasks:
    return CreateTasks(
        request=CreateTaskRequest.model_validate({"script_name": "post", **body}),
        source=TaskSource.API,
    )


async def test_metrics_follow_tasks_agents_and_the_relay(
    bus: Bus, settings: SchedulerSettings, clock: FakeClock
) -> None:
    port = free_port()
    settings = settings.model_copy(update={"scheduler_metrics_port": port})
    url = f"http://127.0.0.1:{port}/metrics"
    async with Scheduler(settings, clock=clock) as sched:
        assert sched.metrics is not None and sched.metrics.port == port
        agent = FakeAgent(bus, "m1", ["m1_phone_1", "m1_phone_2"])
        agent.auto_complete = True
        await agent.start()
        await wait_devices(bus, 2)

        appended, published = "fleet_events_appended_total", "fleet_relay_published_events_total"
        seen: list[Scrape] = []

        async def settled() -> Scrape | None:
            # The relay caught up, and nothing appended or published since the scrape
            # before: within one scrape the lag (read from the database) and the counters
            # (read in process) are not taken at the same instant, so an event committed
            # between the two would count as appended on one side of the window and as
            # published on the other.
            now = await scrape(url)
            last = seen[-1] if seen else None
            seen.append(now)
            quiet = last is not None and all(
                last.total(name) == now.total(name) for name in (appended, published)
            )
            return now if quiet and now.value("fleet_relay_lag_events") == 0 else None

        # The devices' own events may still be on their way to EVENTS: counting from
        # before they are published would count them among this test's.
        before: Scrape = await eventually(settled, what="relay caught up with the devices")

        ok = [await bus.command(create(serials=["m1_phone_1", "m1_phone_2"])) for _ in range(2)]
        assert all(r.code == 0 for r in ok)
        refused = await bus.command(create(serials=["nobody"]))
        assert refused.code == 40001

        async def all_done() -> bool:
            stats = (await bus.query(GetStats())).data
            return bool(stats["completed"] == 4)

        await eventually(all_done, what="4 tasks completed")
        after: Scrape = await eventually(settled, what="relay caught up")

        # Counted in this process, as they happened.
        handled = "fleet_commands_handled_total"
        assert grew(before, after, handled, command="create_tasks", code="0") == 2
        assert grew(before, after, handled, command="create_tasks", code="40001") == 1
        assert moved(before, after, "fleet_command_handling_seconds_count") == 3
        for kind in ("task.created", "task.dispatched", "task.started", "task.completed"):
            assert grew(before, after, appended, type=kind) == 4, kind
        assert moved(before, after, "fleet_dispatch_latency_seconds_count") == 4
        assert moved(before, after, "fleet_dispatch_latency_seconds_sum") >= 0
        # Every event appended in the window is on EVENTS, once. (Over the window, not as
        # totals since start: the counters belong to the test process, and a scheduler
        # of an earlier test may have appended events its relay never published.)
        assert moved(before, after, published) == moved(before, after, appended) > 0
        assert moved(before, after, "fleet_relay_publish_seconds_count") >= 1

        # Read from the database at scrape time.
        assert after.value("fleet_tasks", state="completed") == 4
        assert after.total("fleet_tasks") == 4
        assert after.value("fleet_tasks_by_script", script="post", state="completed") == 4
        assert after.total("fleet_tasks_by_script") == 4
        assert after.value("fleet_agent_up", agent="m1", host="host-m1") == 1
        assert after.value("fleet_agents", state="live") == 1
        assert after.value("fleet_devices", agent="m1", host="host-m1") == 2
        assert after.value("fleet_devices_online", agent="m1", host="host-m1") == 2
        assert after.value("fleet_devices_busy", agent="m1", host="host-m1") == 0
        assert after.value("fleet_relay_leaders") == 1
        assert after.value("fleet_database_up") == 1
        assert after.value("fleet_db_pool_max_connections") == settings.scheduler_db_pool_size
        assert not any("serial" in dict(labels) for _, labels in after)

        # A task held running: it and its phone show as such.
        agent.auto_complete = False
        assert (await bus.command(create(serials=["m1_phone_1"]))).code == 0

        async def running() -> Scrape | None:
            now = await scrape(url)
            return now if now.value("fleet_tasks", state="running") == 1 else None

        held = await eventually(running, what="one task running")
        assert held.value("fleet_devices_busy", agent="m1", host="host-m1") == 1

        # An agent silent for longer than its lease is down, before it is even declared lost.
        agent.beating = False
        clock.advance(seconds=settings.scheduler_agent_lease_seconds + 5)
        silent = await scrape(url)
        assert silent.value("fleet_agent_up", agent="m1", host="host-m1") == 0
        assert silent.value("fleet_agents", state="lost") == 1
        await agent.close()


def report_wait() -> dict[str, float]:
    """`fleet_report_wait_seconds` as this process holds it: count, sum, and the count of
    observations at most 2.5 s."""
    [family] = metrics.REPORT_WAIT.collect()
    name = "fleet_report_wait_seconds"
    value = {s.name: s.value for s in family.samples if s.labels.get("le") in (None, "2.5")}
    return {
        "count": value[f"{name}_count"],
        "sum": value[f"{name}_sum"],
        "within_2_5s": value[f"{name}_bucket"],
    }


async def test_reports_waiting_for_a_scheduler_show_how_long_they_waited(
    bus: Bus, settings: SchedulerSettings
) -> None:
    settings = settings.model_copy(update={"scheduler_metrics_port": free_port()})
    agent = FakeAgent(bus, "w1", ["w1_phone_1"])
    # Its agent.started report is stored in REPORTS with no scheduler to apply it.
    await agent.start()
    await asyncio.sleep(3.0)
    before = report_wait()
    async with Scheduler(settings):
        await wait_devices(bus, 1)

        async def applied() -> bool:
            return report_wait()["count"] > before["count"]

        await eventually(applied, what="the waiting report applied")
        await bus.report(AccountsReport(agent_id="w1", serial="w1_phone_1", accounts=[]))

        async def both() -> bool:
            return report_wait()["count"] - before["count"] >= 2

        await eventually(both, what="a prompt report applied")
    after = report_wait()
    # The waiting one counts over 2.5 s, the prompt one under (room for a slow machine).
    assert after["count"] - before["count"] == 2
    assert after["within_2_5s"] - before["within_2_5s"] == 1
    assert 3.0 <= after["sum"] - before["sum"] < 60
    await agent.close()


async def test_port_zero_serves_nothing(settings: SchedulerSettings) -> None:
    settings = settings.model_copy(update={"scheduler_metrics_port": 0})
    async with Scheduler(settings) as sched:
        assert sched.metrics is None
        assert not metrics.SWITCH.on


def test_settings_read_the_port_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("FLEET_SCHEDULER_METRICS_PORT", "")
    assert SchedulerSettings().scheduler_metrics_port is None
    monkeypatch.setenv("FLEET_SCHEDULER_METRICS_PORT", "9999")
    assert SchedulerSettings().scheduler_metrics_port == 9999
    monkeypatch.delenv("FLEET_SCHEDULER_METRICS_PORT")
    assert SchedulerSettings().scheduler_metrics_port == 9465


def test_exported_names_include_labelled_and_state_metrics() -> None:
    names = metrics.exported()
    assert {"fleet_commands_handled_total", "fleet_nats_reconnects_total"} <= names
    assert {"fleet_dispatch_latency_seconds_bucket", "fleet_tasks", "fleet_agent_up"} <= names


async def test_database_out_of_reach_reads_as_down(settings: SchedulerSettings) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/fleet"
    pool = await asyncpg.create_pool(dead, min_size=0, max_size=2)
    assert pool is not None
    ctx = cast(
        Context,
        type("Ctx", (), {"pool": pool, "settings": settings, "clock": lambda: datetime.now(UTC)}),
    )
    collector = metrics.StateCollector(ctx, asyncio.get_running_loop())
    try:
        snap = await asyncio.to_thread(collector.snapshot)
    finally:
        await pool.close()
    assert snap.database_up is False
    up = next(f for f in metrics.families(snap) if f.name == "fleet_database_up")
    assert [s.value for s in up.samples] == [0.0]
    assert snap.pool[2] == 2


def test_partitions_leased_counts_each_holder_and_the_unheld() -> None:
    held = {1: "scheduler-a", 2: "scheduler-b", 3: "scheduler-a"}
    assert metrics.leased_counts(held, 5) == [("", 2), ("scheduler-a", 2), ("scheduler-b", 1)]
    assert metrics.leased_counts(held, 3) == [("scheduler-a", 2), ("scheduler-b", 1)]
