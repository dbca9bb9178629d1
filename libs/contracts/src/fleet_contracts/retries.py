"""The automatic retry policy: how often, after what pause, and for which failures.

A fleet default comes from the scheduler's settings; a create (or a schedule) may carry
its own policy, recorded on each task it makes. `max_attempts` counts runs in a series,
the first included: 1 means no automatic retry. A manual retry starts a new series.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_contracts.failures import RETRYABLE, FailureClass
from fleet_contracts.validation import FieldRuleError

MAX_ATTEMPTS = 10
MAX_BACKOFF_SECONDS = 3600.0


def default_retry_on() -> list[FailureClass]:
    return sorted(RETRYABLE)


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(
        1, ge=1, le=MAX_ATTEMPTS, description="runs in a series, the first included (1 = off)"
    )
    min_backoff_seconds: float = Field(5.0, ge=0, le=MAX_BACKOFF_SECONDS)
    max_backoff_seconds: float = Field(60.0, ge=0, le=MAX_BACKOFF_SECONDS)
    retry_on: list[FailureClass] = Field(
        default_factory=default_retry_on,
        description="failure classes worth another attempt: " + ", ".join(sorted(RETRYABLE)),
    )

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.min_backoff_seconds > self.max_backoff_seconds:
            raise FieldRuleError(
                "min_backoff_seconds",
                f"{self.min_backoff_seconds:g} is greater than max_backoff_seconds"
                f" {self.max_backoff_seconds:g}",
            )
        for i, failure_class in enumerate(self.retry_on):
            if failure_class not in RETRYABLE:
                raise FieldRuleError(
                    f"retry_on[{i}]",
                    f"{failure_class} failures are never retried automatically"
                    f" (retryable: {', '.join(sorted(RETRYABLE))})",
                )
        return self
