"""Lease decisions: pure functions from (command, what the read models say, the
database's now) to events, or a `Rejected` saying why not. No I/O here.

Rules (TikMatrix's, made explicit):
- a phone can be leased when it is known, online, not running a task and not leased;
  a lease whose time ran out but whose expiry is not yet recorded is expired first;
- live leases and running tasks together stay within the plan's device limit;
- a TTL longer than `MAX_TTL_SECS` is cut to it; each heartbeat extends from now;
- a lease made for a task's custom script ends with that run, never by TTL, and only
  the scheduler ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import LeaseDevice, ReleaseLease, RenewLease
from fleet_contracts.events import LeaseExpired, LeaseGranted, LeaseReleased, LeaseRenewed
from fleet_contracts.sessions import MAX_TTL_SECS
from fleet_contracts.subjects import task_stream_id
from fleet_scheduler.errors import Rejected
from fleet_scheduler.store import NewEvent

SCHEDULER_ACTOR = "scheduler"


def lease_stream_id(lease_id: str) -> str:
    return f"lease-{lease_id}"


@dataclass(frozen=True)
class Phone:
    serial: str
    agent_id: str | None
    online: bool
    task_id: int | None
    """The task holding the phone (dispatched or running), if any."""


@dataclass(frozen=True)
class Lease:
    lease_id: str
    serial: str
    label: str
    actor: str
    ttl_secs: int | None
    task_id: int | None
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.task_id is None and self.expires_at is not None and self.expires_at <= now


def no_lease(detail: str) -> Rejected:
    return Rejected(ErrorCode.LEASE_REQUIRED, detail)


def expire(lease: Lease, now: datetime) -> NewEvent:
    return NewEvent(
        lease_stream_id(lease.lease_id),
        LeaseExpired(lease_id=lease.lease_id, serial=lease.serial, expired_at=now),
    )


def grant(
    cmd: LeaseDevice,
    phone: Phone | None,
    current: Lease | None,
    slots_in_use: int,
    now: datetime,
) -> list[NewEvent]:
    if phone is None:
        raise Rejected(ErrorCode.INVALID_PARAMETERS, f"serial: unknown device {cmd.serial!r}")
    if not phone.online or phone.agent_id is None:
        raise Rejected(ErrorCode.WRONG_STATE, f"serial: device {cmd.serial} is offline")
    if phone.task_id is not None:
        raise Rejected(
            ErrorCode.WRONG_STATE,
            f"device {cmd.serial} is running task {phone.task_id}; lease it when the task ends",
        )
    events: list[NewEvent] = []
    if current is not None:
        if not current.expired(now):
            until = f" until {current.expires_at.isoformat()}" if current.expires_at else ""
            raise Rejected(
                ErrorCode.WRONG_STATE,
                f"device {cmd.serial} is already leased ({current.label or 'no label'!r}, "
                f"by {current.actor}{until})",
            )
        # Its slot is already free: the count leaves out leases past their time.
        events.append(expire(current, now))
    if cmd.device_limit is not None and slots_in_use >= cmd.device_limit:
        raise Rejected(
            ErrorCode.WRONG_STATE,
            f"no free device slot: the plan allows {cmd.device_limit} devices at once and "
            f"this key's tasks and leases occupy {slots_in_use}",
        )
    ttl = min(cmd.ttl_secs, MAX_TTL_SECS)
    events.append(
        NewEvent(
            lease_stream_id(cmd.lease_id),
            LeaseGranted(
                lease_id=cmd.lease_id,
                serial=cmd.serial,
                agent_id=phone.agent_id,
                label=cmd.label,
                ttl_secs=ttl,
                expires_at=now + timedelta(seconds=ttl),
                actor=cmd.actor,
            ),
            expected_version=0,
        )
    )
    return events


def _live(lease_id: str, lease: Lease | None, now: datetime) -> Lease:
    if lease is None:
        raise no_lease(
            "x-session-id: no such lease (never made, released, or expired); "
            "lease the device with POST /api/v1/rpc/session"
        )
    if lease.expired(now):
        raise no_lease(
            f"x-session-id: the lease on {lease.serial} expired; renew leases with "
            "POST /api/v1/rpc/session/{id}/heartbeat before their ttl_secs run out"
        )
    return lease


def renew(cmd: RenewLease, lease: Lease | None, now: datetime) -> list[NewEvent]:
    """Extend from now. A task's lease lives with its run: renewing it changes nothing."""
    current = _live(cmd.lease_id, lease, now)
    if current.task_id is not None:
        return []
    ttl = min(cmd.ttl_secs or current.ttl_secs or MAX_TTL_SECS, MAX_TTL_SECS)
    return [
        NewEvent(
            lease_stream_id(current.lease_id),
            LeaseRenewed(
                lease_id=current.lease_id,
                serial=current.serial,
                ttl_secs=ttl,
                expires_at=now + timedelta(seconds=ttl),
                actor=cmd.actor,
            ),
        )
    ]


def release(cmd: ReleaseLease, lease: Lease | None, now: datetime) -> list[NewEvent]:
    current = _live(cmd.lease_id, lease, now)
    if current.task_id is not None:
        raise Rejected(
            ErrorCode.WRONG_STATE,
            f"this lease belongs to task {current.task_id} and ends with it; "
            f"stop the task to free {current.serial}",
        )
    return [
        NewEvent(
            lease_stream_id(current.lease_id),
            LeaseReleased(lease_id=current.lease_id, serial=current.serial, actor=cmd.actor),
        )
    ]


def for_task(
    lease_id: str, serial: str, agent_id: str, task_id: int, dispatch_id: str, script: str
) -> NewEvent:
    """The lease a custom script's run gets at dispatch (TIKMATRIX_SESSION_ID)."""
    return NewEvent(
        lease_stream_id(lease_id),
        LeaseGranted(
            lease_id=lease_id,
            serial=serial,
            agent_id=agent_id,
            label=f"task {task_id} ({script})",
            task_id=task_id,
            dispatch_id=dispatch_id,
            actor=SCHEDULER_ACTOR,
        ),
        expected_version=0,
    )


def run_ended(lease: Lease) -> NewEvent:
    return NewEvent(
        lease_stream_id(lease.lease_id),
        LeaseReleased(
            lease_id=lease.lease_id,
            serial=lease.serial,
            reason=f"{task_stream_id(lease.task_id or 0)} run ended",
            actor=SCHEDULER_ACTOR,
        ),
    )
