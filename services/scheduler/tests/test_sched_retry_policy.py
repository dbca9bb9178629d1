"""Automatic retry decisions (pure, seeded random) and failure classes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from fleet_contracts.events import parse_event
from fleet_contracts.failures import FailureClass, classify
from fleet_contracts.retries import RetryPolicy
from fleet_contracts.validation import describe
from fleet_scheduler.retry_policy import decide_retry, policy_for

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("agent lost: host-1 sent no heartbeat for 31s", FailureClass.AGENT_LOST),
        ("agent lost: host-1 restarted", FailureClass.AGENT_LOST),
        ("agent host-1 never confirmed start", FailureClass.START_TIMEOUT),
        ("device disconnected", FailureClass.DEVICE_GONE),
        (
            "post step 'share' failed: step 'share': no element matching [text='Share']"
            " within 15s (selector table tiktok 1)",
            FailureClass.UI_TIMEOUT,
        ),
        ("material_list[0]: /v/a.mp4 does not exist on this agent host", FailureClass.MISSING_FILE),
        (
            "material_list[0]: /etc/x is outside the material roots (/m)",
            FailureClass.INVALID_CONFIG,
        ),
        (
            "script_config.post_way: must be share, addButton or useSound",
            FailureClass.INVALID_CONFIG,
        ),
        (
            "material_list[0]: /v.mp4 is not a readable file on this agent's host; check the"
            " path and that the agent may read it",
            FailureClass.MISSING_FILE,
        ),
        ("stopped", FailureClass.STOPPED),
        ("script 'post' crashed: KeyError: 'x'", FailureClass.SCRIPT_ERROR),
        ("something new", FailureClass.OTHER),
    ],
)
def test_reasons_fall_into_their_class(reason: str, expected: FailureClass) -> None:
    assert classify(reason) is expected


def test_a_failure_recorded_before_classes_existed_gets_its_class_when_read() -> None:
    old = parse_event("task.failed", {"task_id": 1, "reason": "device disconnected"})
    assert old.reason_class is FailureClass.DEVICE_GONE  # type: ignore[union-attr]


def test_retries_until_max_attempts_with_a_pause_from_the_range() -> None:
    policy = RetryPolicy(max_attempts=3, min_backoff_seconds=5, max_backoff_seconds=60)
    rng = random.Random(4)
    first = decide_retry(policy, "agent_lost", 0, NOW, rng)
    second = decide_retry(policy, "ui_timeout", 1, NOW, rng)
    assert first is not None and second is not None
    for decision in (first, second):
        assert NOW + timedelta(seconds=5) <= decision.due_at <= NOW + timedelta(seconds=60)
    assert first.reason.startswith("automatic retry 2/3 after agent_lost, back-off ")
    assert second.reason.startswith("automatic retry 3/3 after ui_timeout")
    assert decide_retry(policy, "agent_lost", 2, NOW, rng) is None  # three runs made
    # The same seed, the same pauses.
    again = decide_retry(policy, "agent_lost", 0, NOW, random.Random(4))
    assert again == first


def test_only_the_policys_classes_are_retried() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=[FailureClass.DEVICE_GONE])
    rng = random.Random(1)
    assert decide_retry(policy, "device_gone", 0, NOW, rng) is not None
    for other in ("agent_lost", "missing_file", "invalid_config", "stopped", None):
        assert decide_retry(policy, other, 0, NOW, rng) is None


def test_the_fleet_default_is_off_and_a_tasks_own_policy_wins() -> None:
    fleet = RetryPolicy()
    assert decide_retry(fleet, "agent_lost", 0, NOW, random.Random(1)) is None
    own = policy_for({"max_attempts": 2, "min_backoff_seconds": 0, "max_backoff_seconds": 0}, fleet)
    decision = decide_retry(own, "agent_lost", 0, NOW, random.Random(1))
    assert decision is not None and decision.due_at == NOW


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            {"min_backoff_seconds": 30, "max_backoff_seconds": 5},
            "min_backoff_seconds: 30 is greater than max_backoff_seconds 5",
        ),
        (
            {"retry_on": ["agent_lost", "missing_file"]},
            "retry_on[1]: missing_file failures are never",
        ),
        ({"max_attempts": 11}, "max_attempts:"),
    ],
)
def test_bad_policies_name_the_field(policy: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RetryPolicy.model_validate(policy)
    assert message in describe(caught.value)
