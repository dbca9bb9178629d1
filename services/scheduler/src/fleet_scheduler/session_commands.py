"""The command side of sessions and custom scripts: load what a decision needs, call
the pure deciders (`leases`), return an `Outcome` for `commands.py` to append.

Time is the database's (`clock_timestamp()`), read inside the transaction that holds
the events lock, so schedulers with different wall clocks agree on every expiry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import (
    CreateTasks,
    LeaseDevice,
    RegisterCustomScript,
    ReleaseLease,
    RemoveCustomScript,
    RenewLease,
    SetHostAdb,
)
from fleet_contracts.events import CustomScriptRegistered, CustomScriptRemoved, HostAdbSet
from fleet_contracts.scripts import BUILTIN_CONFIGS
from fleet_contracts.sessions import MAX_SCRIPT_CONFIG_BYTES, json_size
from fleet_scheduler import leases
from fleet_scheduler.device_limit import devices_in_use
from fleet_scheduler.errors import Rejected
from fleet_scheduler.handlers import Outcome, Target
from fleet_scheduler.store import NewEvent

SessionCommand = (
    LeaseDevice | RenewLease | ReleaseLease | RegisterCustomScript | RemoveCustomScript | SetHostAdb
)
CUSTOM_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "free-form; the program reads it as JSON from TIKMATRIX_SCRIPT_CONFIG",
}


async def db_now(conn: asyncpg.Connection) -> datetime:
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


def lease_of(row: asyncpg.Record | None) -> leases.Lease | None:
    if row is None:
        return None
    return leases.Lease(
        lease_id=row["lease_id"],
        serial=row["serial"],
        label=row["label"],
        actor=row["actor"],
        ttl_secs=row["ttl_secs"],
        task_id=row["task_id"],
        expires_at=row["expires_at"],
    )


async def _lease(conn: asyncpg.Connection, lease_id: str) -> leases.Lease | None:
    return lease_of(await conn.fetchrow("SELECT * FROM leases WHERE lease_id = $1", lease_id))


async def _grant(conn: asyncpg.Connection, cmd: LeaseDevice) -> Outcome:
    now = await db_now(conn)
    row = await conn.fetchrow(
        "SELECT serial, agent_id, online, busy, current_task_id FROM devices WHERE serial = $1",
        cmd.serial,
    )
    phone = (
        None
        if row is None
        else leases.Phone(
            serial=row["serial"],
            agent_id=row["agent_id"],
            online=row["online"],
            task_id=row["current_task_id"] if row["busy"] else None,
        )
    )
    current = lease_of(
        await conn.fetchrow(
            "SELECT * FROM leases WHERE serial = $1 AND task_id IS NULL", cmd.serial
        )
    )
    # The same count a create is held to: the phones this key's work occupies, where a
    # phone it already holds costs no new slot.
    held = await devices_in_use(conn, cmd.actor)
    events = leases.grant(cmd, phone, current, len(held - {cmd.serial}), now)
    granted = events[-1].event
    return Outcome(events=events, data=granted.model_dump(mode="json", exclude={"type"}))


async def _register(conn: asyncpg.Connection, cmd: RegisterCustomScript) -> Outcome:
    script = cmd.script
    if script.name in BUILTIN_CONFIGS:
        raise Rejected(ErrorCode.INVALID_PARAMETERS, f"name: {script.name!r} is a built-in script")
    event = CustomScriptRegistered(
        name=script.name,
        command=list(script.command),
        platform=script.platform.value,
        timeout_secs=script.timeout_secs,
        hosts=list(script.hosts),
        description=script.description,
        actor=cmd.actor,
    )
    return Outcome(
        events=[NewEvent(f"script-{script.name}", event)],
        data=event.model_dump(mode="json", exclude={"type"}),
    )


async def _remove(conn: asyncpg.Connection, cmd: RemoveCustomScript) -> Outcome:
    if not await conn.fetchval("SELECT count(*) FROM custom_scripts WHERE name = $1", cmd.name):
        raise Rejected(ErrorCode.NOT_FOUND, f"custom script {cmd.name!r} not found")
    waiting = await conn.fetchval(
        "SELECT count(*) FROM tasks WHERE script_name = $1 AND NOT deleted"
        " AND state IN ('pending', 'dispatched', 'running')",
        cmd.name,
    )
    if waiting:
        raise Rejected(
            ErrorCode.WRONG_STATE,
            f"{waiting} task(s) still wait for or run {cmd.name!r}; stop or delete them first",
        )
    event = CustomScriptRemoved(name=cmd.name, actor=cmd.actor)
    return Outcome(events=[NewEvent(f"script-{cmd.name}", event)], data={"name": cmd.name})


async def decide(conn: asyncpg.Connection, cmd: SessionCommand) -> Outcome:
    match cmd:
        case LeaseDevice():
            return await _grant(conn, cmd)
        case RenewLease():
            events = leases.renew(cmd, await _lease(conn, cmd.lease_id), await db_now(conn))
            data: dict[str, Any] = {"lease_id": cmd.lease_id}
            if events:
                data.update(
                    events[0].event.model_dump(mode="json", include={"expires_at", "ttl_secs"})
                )
            return Outcome(events=events, data=data)
        case ReleaseLease():
            events = leases.release(cmd, await _lease(conn, cmd.lease_id), await db_now(conn))
            return Outcome(events=events, data={"lease_id": cmd.lease_id, "released": True})
        case RegisterCustomScript():
            return await _register(conn, cmd)
        case RemoveCustomScript():
            return await _remove(conn, cmd)
        case SetHostAdb():
            event = HostAdbSet(agent_id=cmd.agent_id, enabled=cmd.enabled, actor=cmd.actor)
            return Outcome(
                events=[NewEvent(f"host-{cmd.agent_id}", event)],
                data={"agent_id": cmd.agent_id, "adb_enabled": cmd.enabled},
            )
    raise Rejected(ErrorCode.INVALID_PARAMETERS, f"type: unknown command {cmd.type!r}")


async def custom_schema(pool: asyncpg.Pool, name: str) -> dict[str, dict[str, Any]]:
    """`{name: schema}` when `name` is a registered custom script, else empty."""
    async with pool.acquire() as conn:
        found = await conn.fetchval("SELECT count(*) FROM custom_scripts WHERE name = $1", name)
    return {name: CUSTOM_CONFIG_SCHEMA} if found else {}


async def check_custom_targets(
    conn: asyncpg.Connection, cmd: CreateTasks, targets: Sequence[Target]
) -> None:
    """A custom script's config is bounded, and every target phone sits on a host that
    has the program."""
    request = cmd.request
    row = await conn.fetchrow(
        "SELECT hosts FROM custom_scripts WHERE name = $1", request.script_name
    )
    if row is None:
        return
    size = json_size(request.script_config)
    if size > MAX_SCRIPT_CONFIG_BYTES:
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS,
            f"script_config: is {size} bytes as JSON; at most {MAX_SCRIPT_CONFIG_BYTES} "
            "are accepted for a custom script",
        )
    hosts = row["hosts"] if isinstance(row["hosts"], list) else json.loads(row["hosts"])
    if not hosts:
        return
    serials = sorted({t.serial for t in targets})
    placed = await conn.fetch(
        "SELECT serial, agent_id FROM devices WHERE serial = ANY($1::text[])", serials
    )
    elsewhere = [
        f"{r['serial']} (on {r['agent_id']})" for r in placed if r["agent_id"] not in hosts
    ]
    if elsewhere:
        field = "usernames" if request.usernames is not None else "serials"
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS,
            f"{field}: custom script {request.script_name!r} is only on hosts "
            f"{', '.join(hosts)}; not on the host of {', '.join(elsewhere)}",
        )
