"""REST request and response bodies of the gateway (the seeds' shapes, gaps resolved)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet_contracts.codes import Plan, TaskSource, TaskStatus
from fleet_contracts.validation import FieldRuleError

HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_INTERVAL_MINUTES = 7 * 24 * 60
MAX_TARGETS = 1000
# Bounds no real user meets (serials are ~20 characters, TikTok usernames at most 24),
# but which keep one request, one row and one bus message small.
MAX_NAME_LENGTH = 200
MAX_SCRIPT_NAME_LENGTH = 100
# Devices and accounts are listed in pages of up to 500 (100 by default), in serial /
# username order; a row is about 300 bytes, so a full page is ~150 kB.
FLEET_PAGE_DEFAULT = 100
FLEET_PAGE_MAX = 500
Serial = str
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]


def parse_hhmm(value: str) -> tuple[int, int]:
    match = HHMM.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return int(match.group(1)), int(match.group(2))


def _clean_targets(values: list[str] | None, field: str) -> list[str] | None:
    if values is None:
        return None
    cleaned = [v.strip() for v in values]
    for i, v in enumerate(cleaned):
        if not v:
            raise FieldRuleError(f"{field}[{i}]", "must not be empty")
    seen: set[str] = set()
    for i, v in enumerate(cleaned):
        if v in seen:
            raise FieldRuleError(f"{field}[{i}]", f"{v!r} is listed twice")
        seen.add(v)
    return cleaned


class CreateTaskRequest(BaseModel):
    """POST /api/v1/task: one of `serials` or `usernames`, a script and its config."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            # Exactly one mode: the schema says it as the model validator enforces it.
            "oneOf": [
                {
                    "required": ["serials"],
                    "properties": {
                        "serials": {"type": "array", "minItems": 1, "uniqueItems": True},
                        "usernames": {"type": "null"},
                    },
                },
                {
                    "required": ["usernames"],
                    "properties": {
                        "usernames": {"type": "array", "minItems": 1, "uniqueItems": True},
                        "serials": {"type": "null"},
                    },
                },
            ],
            "examples": [
                {
                    "serials": ["device_serial_1", "device_serial_2"],
                    "script_name": "post",
                    "script_config": {
                        "content_type": 0,
                        "captions": "Check out my new video! #viral #fyp",
                        "material_list": ["C:/Videos/video1.mp4"],
                        "upload_wait_time": 60,
                    },
                }
            ],
        },
    )

    serials: list[Name] | None = Field(
        None, max_length=MAX_TARGETS, description="device serials (device mode)"
    )
    usernames: list[Name] | None = Field(
        None, max_length=MAX_TARGETS, description="account usernames (username mode)"
    )
    script_name: str = Field(
        ...,
        min_length=1,
        max_length=MAX_SCRIPT_NAME_LENGTH,
        description="name of the script to run",
    )
    script_config: dict[str, Any] = Field(
        default_factory=dict, description="the script's parameters"
    )
    enable_multi_account: bool = Field(
        False, description="device mode: one task per account on each device"
    )
    min_interval: int = Field(0, ge=0, le=MAX_INTERVAL_MINUTES, description="minutes")
    max_interval: int = Field(0, ge=0, le=MAX_INTERVAL_MINUTES, description="minutes")
    start_time: str | None = Field(None, max_length=5, description='"HH:MM", next occurrence')

    @field_validator("start_time")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parse_hhmm(value)
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        serials = _clean_targets(self.serials, "serials")
        usernames = _clean_targets(self.usernames, "usernames")
        if serials is not None and usernames is not None:
            raise FieldRuleError("serials", "give serials or usernames, not both")
        if serials is None and usernames is None:
            raise FieldRuleError("serials", "give serials (device mode) or usernames")
        if serials is not None and not serials:
            raise FieldRuleError("serials", "must hold at least one serial")
        if usernames is not None and not usernames:
            raise FieldRuleError("usernames", "must hold at least one username")
        if usernames is not None and self.enable_multi_account:
            raise FieldRuleError("enable_multi_account", "only applies to device mode (serials)")
        if self.min_interval > self.max_interval:
            raise FieldRuleError(
                "min_interval",
                f"{self.min_interval} is greater than max_interval {self.max_interval}",
            )
        object.__setattr__(self, "serials", serials)
        object.__setattr__(self, "usernames", usernames)
        return self


class CreateTaskResult(BaseModel):
    task_ids: list[int]
    created_count: int


class BatchDeleteRequest(BaseModel):
    task_ids: list[int] = Field(..., min_length=1, max_length=MAX_TARGETS)


class BatchDeleteResult(BaseModel):
    deleted_ids: list[int]
    deleted_count: int
    not_found_ids: list[int] = Field(default_factory=list)


RETRY_ALL_LISTED = 1000
"""retry-all names the tasks it moved only up to this many; the count is always there."""


class RetryAllResult(BaseModel):
    task_ids: list[int] = Field(
        default_factory=list,
        description=f"the retried tasks' ids when at most {RETRY_ALL_LISTED}, else empty"
        " (a reply must stay small whatever the number of failed tasks)",
    )
    retried_count: int


class AccountRequest(BaseModel):
    """POST /api/v1/account: tie a username to the device that holds it."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(..., min_length=1, max_length=MAX_NAME_LENGTH)
    platform: str = Field("tiktok", pattern=r"^(tiktok|instagram)$")
    serial: str = Field(..., min_length=1, max_length=MAX_NAME_LENGTH)


class LicenseInfo(BaseModel):
    plan_name: str
    api_enabled: bool
    device_limit: int | None
    message: str


class TaskView(BaseModel):
    """A task as the API shows it."""

    model_config = ConfigDict(extra="ignore")

    id: int
    serial: str
    username: str | None = None
    script_name: str
    script_config: dict[str, Any]
    status: TaskStatus
    status_name: str = ""
    source: TaskSource = TaskSource.API
    reason: str | None = Field(None, description="why it failed, or why it waits")
    retry_count: int = 0
    min_interval: int = 0
    max_interval: int = 0
    start_time: str | None = None
    agent_id: str | None = None
    progress: int | None = Field(None, description="percent, while running")
    created_at: datetime
    due_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TaskPage(BaseModel):
    tasks: list[TaskView]
    total: int
    page: int
    page_size: int


class TaskStats(BaseModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0


class DeviceView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    serial: str
    agent_id: str | None = None
    host: str | None = None
    model: str | None = None
    android_version: str | None = None
    battery: int | None = None
    online: bool = False
    busy: bool = False
    current_task_id: int | None = None
    last_seen: datetime | None = None


class DevicePage(BaseModel):
    devices: list[DeviceView]
    total: int
    page: int
    page_size: int


class AccountView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str
    platform: str = "tiktok"
    serial: str
    source: str = Field("agent", description="agent (found on the phone) or api")


class AccountPage(BaseModel):
    accounts: list[AccountView]
    total: int
    page: int
    page_size: int


class TaskEventView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    position: int
    version: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = Field(
        None, description='who caused it: an API key\'s name, "scheduler" or "agent:<id>"'
    )


PLAN_NAMES = [p.value for p in Plan]
