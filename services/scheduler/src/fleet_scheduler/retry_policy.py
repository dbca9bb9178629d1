"""Automatic retries, decided: whether a failed task runs again, and after what pause.

Rules (pure; a fake clock and a seeded random source in tests):
- the task's own policy (recorded on its TaskCreated) wins over the fleet's;
- only a failure whose class is in the policy's `retry_on` is retried (never a missing
  file, an invalid config or an operator's stop: those are refused by the policy model);
- `max_attempts` counts the runs of a series, the first included; a series starts at the
  create and again at each manual retry (its TaskRetried says `automatic: false`, and
  the task's `auto_retries` shows 0 again; `retry_count` and `attempt` keep counting);
- the pause before the next attempt is drawn uniformly from the policy's back-off range
  and becomes the retried task's due time, with the reason shown while it waits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleet_contracts.failures import FailureClass
from fleet_contracts.retries import RetryPolicy


@dataclass(frozen=True)
class AutoRetry:
    due_at: datetime
    reason: str


def policy_for(own: dict[str, Any] | None, fleet: RetryPolicy) -> RetryPolicy:
    return fleet if own is None else RetryPolicy.model_validate(own)


def decide_retry(
    policy: RetryPolicy,
    reason_class: FailureClass | str | None,
    auto_retries: int,
    now: datetime,
    rng: random.Random,
) -> AutoRetry | None:
    """The next automatic attempt of a task that just failed, or None to leave it failed."""
    if reason_class is None or FailureClass(reason_class) not in policy.retry_on:
        return None
    attempt = auto_retries + 2  # the run about to be tried, within this series
    if attempt > policy.max_attempts:
        return None
    pause = rng.uniform(policy.min_backoff_seconds, policy.max_backoff_seconds)
    reason = (
        f"automatic retry {attempt}/{policy.max_attempts} after {reason_class},"
        f" back-off {pause:.0f}s"
    )
    return AutoRetry(due_at=now + timedelta(seconds=pause), reason=reason)
