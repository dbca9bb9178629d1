"""Fire times (pure): cron and weekly templates in a zone, both DST changes, and the
missed-fire rule (only the latest, within the grace)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from fleet_contracts.schedules import ScheduleRequest
from fleet_scheduler.fires import cron_lines, next_fires, plan_fire

NEW_YORK = ZoneInfo("America/New_York")


def spec(**fields: Any) -> ScheduleRequest:
    return ScheduleRequest.model_validate(
        {"serials": ["s1"], "script_name": "post", "timezone": "America/New_York", **fields}
    )


def local(instants: list[datetime]) -> list[str]:
    return [f"{i.astimezone(NEW_YORK):%a %m-%d %H:%M %Z}" for i in instants]


def test_weekly_template_is_one_cron_line_per_slot_with_sunday_as_zero() -> None:
    weekly = spec(weekly={"days": ["mon", "sun"], "times": ["18:30", "09:05"]})
    assert cron_lines(weekly) == ["5 9 * * 1,0", "30 18 * * 1,0"]


def test_fall_back_fires_a_fixed_time_once_and_keeps_local_time_after() -> None:
    # 1 November 2026: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice.
    s = spec(cron="30 1 * * *")
    after = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)
    assert local(next_fires(s, after, 3)) == [
        "Sun 11-01 01:30 EDT",
        "Mon 11-02 01:30 EST",
        "Tue 11-03 01:30 EST",
    ]


def test_spring_forward_moves_a_skipped_time_to_the_minute_after_the_gap() -> None:
    # 8 March 2026: 02:00 EST jumps to 03:00 EDT; 02:15 does not exist that day.
    s = spec(weekly={"days": ["sat", "sun", "mon"], "times": ["02:15", "12:00"]})
    after = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    assert local(next_fires(s, after, 5)) == [
        "Sat 03-07 12:00 EST",
        "Sun 03-08 03:00 EDT",
        "Sun 03-08 12:00 EDT",
        "Mon 03-09 02:15 EDT",
        "Mon 03-09 12:00 EDT",
    ]


def test_only_the_latest_missed_fire_is_taken_and_only_within_the_grace() -> None:
    s = spec(cron="0 * * * *")  # hourly
    since = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    grace = timedelta(minutes=5)
    assert plan_fire(s, since, since + timedelta(minutes=59), grace) is None
    taken = plan_fire(s, since, datetime(2026, 6, 1, 13, 4, tzinfo=UTC), grace)
    assert taken is not None
    assert (taken.fire_at, taken.take, taken.missed) == (
        datetime(2026, 6, 1, 13, 0, tzinfo=UTC),
        True,
        2,
    )
    late = plan_fire(s, since, datetime(2026, 6, 1, 13, 6, tzinfo=UTC), grace)
    assert late is not None and not late.take and late.missed == 2


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"cron": "61 * * * *"}, "cron", "not a valid cron expression"),
        ({"cron": "* * * *"}, "cron", "five fields"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"weekly": {"days": ["mon"], "times": ["25:00"]}}, "weekly.times[0]", "HH:MM"),
        ({}, "cron", "give cron or weekly"),
        ({"cron": "0 9 * * *", "group": "g"}, "group", "one target"),
    ],
)
def test_bad_definitions_name_the_field(fields: dict[str, Any], field: str, problem: str) -> None:
    from fleet_contracts.validation import describe

    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    message = describe(caught.value)
    assert message.startswith(field), message
    assert problem in message, message
