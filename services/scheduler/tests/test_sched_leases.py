"""Lease decisions (`leases.py`) with a fake clock: who may lease, renew and release,
what a TTL becomes, and how the plan's device slots are counted against a lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import LeaseDevice, ReleaseLease, RenewLease
from fleet_contracts.events import LeaseExpired, LeaseGranted, LeaseReleased, LeaseRenewed
from fleet_scheduler import leases
from fleet_scheduler.errors import Rejected

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FREE = leases.Phone(serial="s1", agent_id="host-1", online=True, task_id=None)


def ask(ttl: int = 120, limit: int | None = None) -> LeaseDevice:
    return LeaseDevice(
        lease_id="L1", serial="s1", label="crawler", ttl_secs=ttl, device_limit=limit, actor="ops"
    )


def held(expires_in: float | None, task_id: int | None = None) -> leases.Lease:
    return leases.Lease(
        lease_id="L0",
        serial="s1",
        label="other",
        actor="someone",
        ttl_secs=60,
        task_id=task_id,
        expires_at=None if expires_in is None else NOW + timedelta(seconds=expires_in),
    )


def refusal(call: object) -> Rejected:
    with pytest.raises(Rejected) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_a_free_phone_is_leased_for_its_ttl_by_its_actor() -> None:
    [new] = leases.grant(ask(ttl=30), FREE, None, slots_in_use=0, now=NOW)
    event = new.event
    assert isinstance(event, LeaseGranted)
    assert (event.expires_at, event.actor, event.agent_id) == (
        NOW + timedelta(seconds=30),
        "ops",
        "host-1",
    )


def test_a_ttl_past_the_maximum_is_cut_to_it() -> None:
    [new] = leases.grant(ask(ttl=100_000), FREE, None, 0, NOW)
    assert new.event.ttl_secs == 600  # type: ignore[attr-defined]


def test_unknown_offline_running_and_leased_phones_are_refused() -> None:
    unknown = refusal(lambda: leases.grant(ask(), None, None, 0, NOW))
    assert unknown.code is ErrorCode.INVALID_PARAMETERS and unknown.message.startswith("serial:")
    offline = leases.Phone(serial="s1", agent_id="host-1", online=False, task_id=None)
    assert "offline" in refusal(lambda: leases.grant(ask(), offline, None, 0, NOW)).message
    running = leases.Phone(serial="s1", agent_id="host-1", online=True, task_id=7)
    busy = refusal(lambda: leases.grant(ask(), running, None, 1, NOW))
    assert busy.code is ErrorCode.WRONG_STATE and "task 7" in busy.message
    taken = refusal(lambda: leases.grant(ask(), FREE, held(5), 1, NOW))
    assert taken.code is ErrorCode.WRONG_STATE and "already leased" in taken.message


def test_a_lease_past_its_time_is_expired_before_the_new_one() -> None:
    expired, granted = leases.grant(ask(), FREE, held(-1), 0, NOW)
    assert isinstance(expired.event, LeaseExpired) and expired.event.lease_id == "L0"
    assert isinstance(granted.event, LeaseGranted)


def test_the_plan_limit_counts_tasks_and_leases_together() -> None:
    full = refusal(lambda: leases.grant(ask(limit=20), FREE, None, slots_in_use=20, now=NOW))
    assert full.code is ErrorCode.WRONG_STATE and "20 devices" in full.message
    assert leases.grant(ask(limit=20), FREE, None, slots_in_use=19, now=NOW)
    assert leases.grant(ask(limit=None), FREE, None, slots_in_use=10_000, now=NOW)


def test_renewal_extends_from_now_and_an_expired_lease_cannot_be_renewed() -> None:
    [new] = leases.renew(RenewLease(lease_id="L0", actor="ops"), held(3), NOW)
    assert isinstance(new.event, LeaseRenewed)
    assert new.event.expires_at == NOW + timedelta(seconds=60)
    gone = refusal(lambda: leases.renew(RenewLease(lease_id="L0"), held(0), NOW))
    assert gone.code is ErrorCode.LEASE_REQUIRED and "expired" in gone.message
    never = refusal(lambda: leases.renew(RenewLease(lease_id="L9"), None, NOW))
    assert never.code is ErrorCode.LEASE_REQUIRED
    # A task's lease lives with its run: a heartbeat on it changes nothing.
    assert leases.renew(RenewLease(lease_id="L0"), held(None, task_id=4), NOW) == []


def test_release_frees_a_lease_but_not_one_made_for_a_task() -> None:
    [new] = leases.release(ReleaseLease(lease_id="L0", actor="ops"), held(10), NOW)
    assert isinstance(new.event, LeaseReleased) and new.event.actor == "ops"
    owned = refusal(lambda: leases.release(ReleaseLease(lease_id="L0"), held(None, 4), NOW))
    assert owned.code is ErrorCode.WRONG_STATE and "task 4" in owned.message
