"""The scheduler's configuration, read once at start from `FLEET_*` variables."""

from __future__ import annotations

import os
import socket
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fleet_contracts.retries import RetryPolicy
from fleet_contracts.validation import describe
from fleet_runtime.link import NatsLinkSettings


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SchedulerSettings(NatsLinkSettings):  # + NATS identity, TLS, stream limits
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/fleet"
    timezone: str = "UTC"
    scheduler_id: str = Field(default_factory=_default_id)
    scheduler_agent_lease_seconds: float = Field(30.0, gt=0)
    scheduler_start_timeout_seconds: float = Field(30.0, gt=0)
    scheduler_dispatch_poll_seconds: float = Field(1.0, gt=0)
    scheduler_db_pool_size: int = Field(10, ge=2)
    scheduler_seed: int | None = None
    scheduler_partitions: int = Field(16, ge=1, le=1024)
    """Partitions of a new log (fixed at install; a later change is ignored, logged)."""
    scheduler_idle_transaction_seconds: float = Field(30.0, ge=1, le=3600)
    """A transaction of this scheduler left idle this long is ended by the database: a
    scheduler paused (SIGSTOP, a frozen VM) in the middle of one would otherwise keep
    its partitions locked, and every writer waiting, until it resumed."""
    scheduler_relay_process: bool = True
    """`python -m fleet_scheduler` publishes the log from a process of its own
    (`relay_process.py`), so the relay's CPU is not spent on the scheduler's loop."""
    scheduler_partition_lease_seconds: float = Field(5.0, ge=0.5, le=300)
    """How long a scheduler's hold on its partitions lasts unrenewed: a killed
    scheduler's partitions move to the others within it (renewed every quarter of it)."""
    # Past these, a command / report id is forgotten: each must exceed the max age of
    # its stream (COMMANDS 7 days, REPORTS 1 day), or a redelivery could apply twice.
    scheduler_command_results_keep_seconds: float = Field(8 * 24 * 3600.0, gt=0)
    scheduler_report_ids_keep_seconds: float = Field(2 * 24 * 3600.0, gt=0)
    log_level: str = "INFO"
    # Fleet scheduling (groups, automatic retries, schedules, webhooks)
    scheduler_retry_max_attempts: int = Field(1, ge=1, le=10)
    scheduler_retry_min_seconds: float = Field(5.0, ge=0, le=3600)
    scheduler_retry_max_seconds: float = Field(60.0, ge=0, le=3600)
    scheduler_retry_on: str = "agent_lost,start_timeout,device_gone,ui_timeout"
    scheduler_retry_poll_seconds: float = Field(1.0, gt=0)
    scheduler_schedule_poll_seconds: float = Field(1.0, gt=0)
    scheduler_schedule_grace_seconds: float = Field(300.0, ge=0)
    scheduler_webhook_timeout_seconds: float = Field(5.0, gt=0)
    scheduler_webhook_max_attempts: int = Field(8, ge=1, le=50)
    scheduler_webhook_backoff_seconds: float = Field(2.0, gt=0)
    # Metrics: /metrics on a port of its own; 0 or empty serves none (see metrics.py).
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    scheduler_metrics_port: int | None = Field(9465, ge=0, le=65535)

    @field_validator("scheduler_metrics_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone name") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @model_validator(mode="after")
    def _retry_policy(self) -> Self:
        self.retry_policy  # noqa: B018 - fail at start, naming the variable, not at the first failure
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        """The fleet's automatic retry policy (a create may bring its own)."""
        try:
            return RetryPolicy(
                max_attempts=self.scheduler_retry_max_attempts,
                min_backoff_seconds=self.scheduler_retry_min_seconds,
                max_backoff_seconds=self.scheduler_retry_max_seconds,
                retry_on=[c.strip() for c in self.scheduler_retry_on.split(",") if c.strip()],
            )
        except ValidationError as exc:
            raise ValueError(f"FLEET_SCHEDULER_RETRY_*: {describe(exc)}") from exc
