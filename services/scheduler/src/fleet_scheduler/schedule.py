"""What runs next, and when: pure decisions taking a clock value and a random source.

- `start_time` "HH:MM" is its next occurrence (now or later) in the configured zone.
- A device pauses between tasks: the pause before a task is drawn uniformly from that
  task's [min_interval, max_interval] minutes, counted from the finish of the device's
  previous task; the task is due at max(its own due time, that finish + the pause).
- Each idle device runs its oldest due task (due time, then id), one at a time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from fleet_contracts.rest import parse_hhmm


def next_occurrence(hhmm: str, now: datetime, zone: ZoneInfo) -> datetime:
    """The first moment at or after `now` when the zone's clock reads `hhmm`."""
    hour, minute = parse_hhmm(hhmm)
    local = now.astimezone(zone)
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate < local.replace(second=0, microsecond=0):
        candidate = (candidate + timedelta(days=1)).replace(hour=hour, minute=minute)
    # A wall time skipped by a DST jump maps to the instant after the gap.
    return candidate.astimezone(now.tzinfo)


def initial_due(start_time: str | None, now: datetime, zone: ZoneInfo) -> tuple[datetime, str]:
    """When a new task becomes due, and why it waits until then ('' when due now)."""
    if not start_time:
        return now, ""
    due = next_occurrence(start_time, now, zone)
    if due <= now:
        return now, ""
    return due, f"start_time {start_time} {zone.key}"


def format_pause(pause: timedelta) -> str:
    seconds = round(pause.total_seconds())
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"


@dataclass(frozen=True)
class Candidate:
    """A pending task that is due, as the dispatcher sees it."""

    task_id: int
    serial: str
    due_at: datetime
    min_interval: int = 0
    max_interval: int = 0
    interval_anchor: int | None = None
    """The previous task its interval was already drawn after, if any."""


@dataclass(frozen=True)
class Slot:
    """An online, idle device on a live agent."""

    serial: str
    agent_id: str
    last_task_id: int | None = None
    last_finished_at: datetime | None = None


@dataclass(frozen=True)
class Dispatch:
    task_id: int
    serial: str
    agent_id: str


@dataclass(frozen=True)
class Reschedule:
    task_id: int
    due_at: datetime
    reason: str
    after_task_id: int


Decision = Dispatch | Reschedule


def decide(
    slots: list[Slot],
    candidates: list[Candidate],
    now: datetime,
    rng: random.Random,
) -> list[Decision]:
    """For each idle device, dispatch its oldest due task, or push it back by its pause."""
    by_serial: dict[str, list[Candidate]] = {}
    for cand in sorted(candidates, key=lambda c: (c.due_at, c.task_id)):
        if cand.due_at <= now:
            by_serial.setdefault(cand.serial, []).append(cand)
    decisions: list[Decision] = []
    for slot in sorted(slots, key=lambda s: s.serial):
        queue = by_serial.get(slot.serial)
        if not queue:
            continue
        cand = queue[0]
        needs_pause = (
            cand.max_interval > 0
            and slot.last_task_id is not None
            and slot.last_finished_at is not None
            and cand.interval_anchor != slot.last_task_id
        )
        if needs_pause:
            assert slot.last_task_id is not None and slot.last_finished_at is not None
            pause = timedelta(minutes=rng.uniform(cand.min_interval, cand.max_interval))
            due = max(cand.due_at, slot.last_finished_at + pause)
            decisions.append(
                Reschedule(
                    task_id=cand.task_id,
                    due_at=due,
                    reason=f"interval {format_pause(pause)} after task {slot.last_task_id}",
                    after_task_id=slot.last_task_id,
                )
            )
            if due > now:
                continue
        decisions.append(Dispatch(task_id=cand.task_id, serial=slot.serial, agent_id=slot.agent_id))
    return decisions
