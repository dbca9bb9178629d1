"""Recurring schedules: when (cron or a weekday x time-slot template, in a named zone),
what (script and config) and on which phones (group, serials or usernames).

Validation lives here so the gateway answers 400 naming the field before anything is
sent, and the scheduler checks commands from anywhere with the same rules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from fleet_contracts.rest import MAX_TARGETS, parse_hhmm
from fleet_contracts.retries import RetryPolicy
from fleet_contracts.validation import FieldRuleError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Overlap = Literal["skip", "queue"]


def check_cron(expr: str) -> str:
    """A five-field cron expression (minute hour day-of-month month day-of-week)."""
    expr = " ".join(expr.split())
    if len(expr.split(" ")) != 5:
        raise ValueError(
            f"{expr!r} is not a cron expression of five fields"
            " (minute hour day-of-month month day-of-week)"
        )
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from exc
    return expr


def check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone name") from exc
    return name


def _hhmm(value: str) -> str:
    parse_hhmm(value)
    return value


class WeeklyTemplate(BaseModel):
    """TikMatrix's schedule template: these weekdays, at these local times."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        ..., min_length=1, max_length=7
    )
    times: list[Annotated[str, AfterValidator(_hhmm)]] = Field(
        ..., min_length=1, max_length=48, description='"HH:MM" slots'
    )

    @field_validator("times")
    @classmethod
    def _sorted(cls, values: list[str]) -> list[str]:
        return sorted(set(values))


class ScheduleRequest(BaseModel):
    """POST /schedule and PUT /schedule/{id}: the whole definition."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "morning posts",
                    "cron": "30 9 * * mon-fri",
                    "timezone": "Europe/Berlin",
                    "group": "shop-a",
                    "script_name": "post",
                    "script_config": {"material_list": ["/media/a.mp4"]},
                    "overlap": "skip",
                }
            ]
        },
    )

    name: str = Field("", max_length=200)
    cron: str | None = Field(None, max_length=200, description="minute hour dom month dow")
    weekly: WeeklyTemplate | None = None
    timezone: str = Field("UTC", max_length=64, description="IANA zone the times are read in")
    group: str | None = Field(None, min_length=1, max_length=100)
    serials: list[str] | None = Field(None, min_length=1, max_length=MAX_TARGETS)
    usernames: list[str] | None = Field(None, min_length=1, max_length=MAX_TARGETS)
    script_name: str = Field(..., min_length=1, max_length=100)
    script_config: dict[str, Any] = Field(default_factory=dict)
    enable_multi_account: bool = False
    enabled: bool = True
    overlap: Overlap = Field(
        "skip", description="when the previous fire's tasks have not all ended: skip or queue"
    )
    retry: RetryPolicy | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @model_validator(mode="after")
    def _one_of_each(self) -> Self:
        if (self.cron is None) == (self.weekly is None):
            raise FieldRuleError("cron", "give cron or weekly, exactly one")
        targets = [n for n in ("group", "serials", "usernames") if getattr(self, n) is not None]
        if len(targets) != 1:
            raise FieldRuleError("group", "give one target: group, serials or usernames")
        return self


class ScheduleView(ScheduleRequest):
    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_fire_skipped: str | None = Field(
        None, description="why the last fire made no tasks ('' when it made them)"
    )
    next_fires: list[datetime] = Field(
        default_factory=list, description="the next fire times, in the schedule's zone"
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> Self:  # a stored schedule was checked when it was defined
        return self
