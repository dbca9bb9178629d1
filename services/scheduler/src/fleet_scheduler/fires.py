"""When a schedule fires: pure functions of its definition, a clock value and a grace.

- A cron expression is read in the schedule's IANA zone by `cronsim`; a weekly template
  (days x "HH:MM" slots) is the same thing, one cron line per slot, so both follow one
  DST rule: a fire time inside a spring-forward gap fires at the first minute after the
  gap (02:30 on a day that skips 02:00-03:00 fires at 03:00); a fixed time in the
  repeated hour of a fall-back fires once, at its first occurrence; a stepped minute or
  hour field (`*/30 * * * *`) fires in both copies of the repeated hour, as cron does.
- Fires are counted after the later of the last recorded fire and the moment the
  schedule was (re)defined or resumed: enabling a schedule never fires its past.
- Missed fires (everything down, the schedule's loop late): of the fires due by now,
  only the latest is taken, and only if it is at most `grace` late; older ones are
  skipped and counted (`missed` on the fire event); a latest fire later than the grace
  is recorded as skipped, so it is never taken later either.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from cronsim import CronSim

from fleet_contracts.rest import parse_hhmm
from fleet_contracts.schedules import WEEKDAYS, ScheduleRequest

MAX_SCAN = 10_000
"""Fire times looked at in one catch-up; `missed` counts at most this many."""


def cron_lines(spec: ScheduleRequest) -> list[str]:
    if spec.cron is not None:
        return [spec.cron]
    assert spec.weekly is not None
    # cron numbers weekdays from Sunday (0); WEEKDAYS starts on Monday.
    days = ",".join(str((WEEKDAYS.index(d) + 1) % 7) for d in spec.weekly.days)
    lines = []
    for slot in spec.weekly.times:
        hour, minute = parse_hhmm(slot)
        lines.append(f"{minute} {hour} * * {days}")
    return lines


def _iterate(spec: ScheduleRequest, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, in order, as UTC instants, without repeats."""
    zone = ZoneInfo(spec.timezone)
    start = after.astimezone(zone)
    merged = heapq.merge(*(CronSim(line, start) for line in cron_lines(spec)))
    last: datetime | None = None
    for local in merged:
        instant = local.astimezone(UTC)
        if instant != last:
            last = instant
            yield instant


def next_fires(spec: ScheduleRequest, after: datetime, count: int = 5) -> list[datetime]:
    return list(islice(_iterate(spec, after), count))


def fires_between(spec: ScheduleRequest, after: datetime, until: datetime) -> list[datetime]:
    """Fire times in (after, until], at most MAX_SCAN of the latest."""
    out: list[datetime] = []
    for instant in _iterate(spec, after):
        if instant > until:
            break
        out.append(instant)
        if len(out) > MAX_SCAN:
            out = out[-MAX_SCAN:]
    return out


@dataclass(frozen=True)
class FirePlan:
    fire_at: datetime
    take: bool
    missed: int
    """Older fires skipped in favour of this one."""


def plan_fire(
    spec: ScheduleRequest, since: datetime, now: datetime, grace: timedelta
) -> FirePlan | None:
    """What to record now for a schedule last fired (or defined) at `since`."""
    due = fires_between(spec, since, now)
    if not due:
        return None
    latest = due[-1]
    return FirePlan(fire_at=latest, take=now - latest <= grace, missed=len(due) - 1)
