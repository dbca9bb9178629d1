"""Recurring schedules on a fake clock, with two schedulers running: fires at the right
local times across a DST change, each recorded (and its tasks created) exactly once,
a restart that does not fire again, and missed fires taken per the stated rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import CreateGroup, DefineSchedule, DeleteGroup, RenameGroup
from fleet_contracts.groups import CreateGroupRequest
from fleet_contracts.queries import GetSchedule
from fleet_contracts.schedules import ScheduleRequest
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus, FakeAgent, FakeClock, eventually

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def clock() -> FakeClock:
    # The Saturday before Europe's spring-forward (Sunday 29 March 2026, 02:00 -> 03:00).
    return FakeClock(datetime(2026, 3, 27, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings(settings: SchedulerSettings) -> SchedulerSettings:
    return settings.model_copy(
        update={"scheduler_schedule_poll_seconds": 0.05, "scheduler_schedule_grace_seconds": 600}
    )


@pytest.fixture
async def second(settings: SchedulerSettings, clock: FakeClock) -> AsyncIterator[Scheduler]:
    other = settings.model_copy(update={"scheduler_id": "test-scheduler-2"})
    async with Scheduler(other, clock=clock, relay_enabled=False) as s:
        yield s


async def define(bus: Bus, **spec: Any) -> int:
    group = await bus.command(
        CreateGroup(group=CreateGroupRequest(name="shop-a", serials=["device_serial_1"]))
    )
    assert group.ok, group.message
    body = {"group": "shop-a", "script_name": "post", "overlap": "queue", **spec}
    result = await bus.command(DefineSchedule(schedule=ScheduleRequest.model_validate(body)))
    assert result.ok, result.message
    schedule_id: int = result.data["id"]
    return schedule_id


async def fires(db: asyncpg.Connection, schedule_id: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT data FROM events WHERE type = 'schedule.fired' AND stream_id = $1"
        " ORDER BY position",
        f"schedule-{schedule_id}",
    )
    return [r["data"] for r in rows]


async def wait_fires(db: asyncpg.Connection, schedule_id: int, count: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        found = await fires(db, schedule_id)
        return found if len(found) >= count else None

    found: list[dict[str, Any]] = await eventually(enough, what=f"{count} fires")
    return found


def local(fire: dict[str, Any]) -> str:
    at = datetime.fromisoformat(fire["fire_at"]).astimezone(BERLIN)
    return f"{at:%m-%d %H:%M %Z}"


async def test_fires_at_local_times_across_spring_forward_once_with_two_schedulers(
    bus: Bus,
    agent: FakeAgent,
    second: Scheduler,
    clock: FakeClock,
    db: asyncpg.Connection,
) -> None:
    agent.answer = False
    schedule_id = await define(bus, cron="30 2 * * *", timezone="Europe/Berlin")
    upcoming = (await bus.query(GetSchedule(schedule_id=schedule_id))).data["next_fires"]
    assert upcoming[:3] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night: the minute after
        "2026-03-30T02:30:00+02:00",
    ]
    expected = ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]
    for n, fire_at in enumerate(upcoming[:3], start=1):
        clock.now = datetime.fromisoformat(fire_at).astimezone(UTC) - timedelta(seconds=1)
        clock.advance(seconds=2)
        recorded = await wait_fires(db, schedule_id, n)
        assert [local(f) for f in recorded] == expected[:n]

    # Both schedulers ran the loop throughout: one event, one row, one task per fire.
    recorded = await fires(db, schedule_id)
    assert len(recorded) == 3
    assert [len(f["task_ids"]) for f in recorded] == [1, 1, 1]
    assert await db.fetchval("SELECT count(*) FROM schedule_fires") == 3
    tasks = await db.fetch("SELECT serial, schedule_id, batch_id FROM tasks ORDER BY id")
    assert [(t["serial"], t["schedule_id"]) for t in tasks] == [
        ("device_serial_1", schedule_id)
    ] * 3
    assert len({t["batch_id"] for t in tasks}) == 3


async def test_a_restarted_scheduler_does_not_fire_again_and_takes_only_the_latest_missed_fire(
    bus: Bus,
    agent: FakeAgent,
    scheduler: Scheduler,
    settings: SchedulerSettings,
    clock: FakeClock,
    db: asyncpg.Connection,
) -> None:
    agent.answer = False
    schedule_id = await define(
        bus, weekly={"days": ["sat", "sun"], "times": ["09:00"]}, timezone="Europe/Berlin"
    )
    clock.now = datetime(2026, 3, 28, 8, 0, 30, tzinfo=UTC)  # Saturday 09:00:30 CET
    [first] = await wait_fires(db, schedule_id, 1)
    assert local(first) == "03-28 09:00 CET"

    await scheduler.stop()
    # Down over Sunday 09:00 and Saturday 4 April 09:00; back 5 minutes after the latter.
    clock.now = datetime(2026, 4, 4, 7, 5, tzinfo=UTC)
    async with Scheduler(settings, clock=clock):
        recorded = await wait_fires(db, schedule_id, 2)
        assert local(recorded[1]) == "04-04 09:00 CEST"
        assert recorded[1]["missed"] == 1  # Sunday's fire, older than the latest: skipped
        assert len(recorded[1]["task_ids"]) == 1
        assert await db.fetchval("SELECT count(*) FROM tasks") == 2

        # Down again past the grace (10 min): the fire is recorded as skipped, no tasks.
        clock.now = datetime(2026, 4, 5, 8, 0, tzinfo=UTC)
        recorded = await wait_fires(db, schedule_id, 3)
        assert recorded[2]["skipped"].startswith("missed")
        assert recorded[2]["task_ids"] == []
        assert await db.fetchval("SELECT count(*) FROM tasks") == 2
        shown = (await bus.query(GetSchedule(schedule_id=schedule_id))).data
        assert shown["last_fire_skipped"].startswith("missed")
        assert shown["next_fires"][0] == "2026-04-11T09:00:00+02:00"

        # The schedule names its group: the group cannot be renamed or deleted under it.
        group_id = await db.fetchval("SELECT id FROM groups WHERE name = 'shop-a'")
        for cmd in (RenameGroup(group_id=group_id, name="shop-z"), DeleteGroup(group_id=group_id)):
            refused = await bus.command(cmd)
            assert refused.code == ErrorCode.WRONG_STATE
            assert f"target of schedule(s) {schedule_id}" in refused.message
