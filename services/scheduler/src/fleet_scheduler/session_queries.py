"""Queries for sessions and custom scripts, answered from their read models.

`CheckLease` is asked before every call on a phone: it says whether the lease lives
(on the database clock, so an unrenewed lease stops working the moment its time is
up, before its expiry is even recorded), that it is for that serial, which agent holds
the phone, and whether that host allows adb.
"""

from __future__ import annotations

from typing import Any

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import Reply
from fleet_contracts.queries import (
    CheckLease,
    ListAdbHosts,
    ListCustomScripts,
    ListLeases,
    ListRpcDevices,
)
from fleet_contracts.sessions import CustomScriptView, LeaseCheck, LeaseView, RpcDeviceView
from fleet_scheduler.context import Context
from fleet_scheduler.session_projections import as_list


async def check_lease(ctx: Context, q: CheckLease) -> Reply:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT l.*, l.expires_at <= clock_timestamp() AS expired, d.agent_id AS holder,"
            " d.online, COALESCE(h.adb_enabled, false) AS adb FROM leases l"
            " LEFT JOIN devices d ON d.serial = l.serial"
            " LEFT JOIN host_settings h ON h.agent_id = d.agent_id WHERE l.lease_id = $1",
            q.lease_id,
        )
    if row is None:
        return Reply.failure(
            ErrorCode.LEASE_REQUIRED,
            "x-session-id: no such lease (never made, released, or expired); "
            "lease the device with POST /api/v1/rpc/session",
        )
    if row["task_id"] is None and row["expired"]:
        return Reply.failure(
            ErrorCode.LEASE_REQUIRED,
            f"x-session-id: the lease on {row['serial']} expired at "
            f"{row['expires_at'].isoformat()}; renew it with POST "
            "/api/v1/rpc/session/{id}/heartbeat before its ttl_secs run out",
        )
    if row["serial"] != q.serial:
        return Reply.failure(
            ErrorCode.LEASE_REQUIRED,
            f"serial: this session leases {row['serial']}, not {q.serial}",
        )
    if not row["online"] or row["holder"] is None:
        return Reply.failure(ErrorCode.WRONG_STATE, f"serial: device {q.serial} is offline")
    check = LeaseCheck(
        lease_id=row["lease_id"],
        serial=row["serial"],
        agent_id=row["holder"],
        actor=row["actor"],
        adb_enabled=row["adb"],
    )
    return Reply(data=check.model_dump(mode="json"))


async def list_leases(ctx: Context, q: ListLeases) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM leases WHERE task_id IS NOT NULL OR expires_at > clock_timestamp()"
            " ORDER BY created_at, lease_id"
        )
    return Reply(data=[LeaseView.model_validate(dict(r)).model_dump(mode="json") for r in rows])


async def rpc_devices(ctx: Context, q: ListRpcDevices) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT d.*, l.label AS lease_label, l.lease_id IS NOT NULL AS leased FROM devices d"
            " LEFT JOIN leases l ON l.serial = d.serial AND l.task_id IS NULL"
            " AND l.expires_at > clock_timestamp() WHERE d.online ORDER BY d.serial"
        )
    views = [
        RpcDeviceView(
            serial=r["serial"],
            model=r["model"],
            android_version=r["android_version"],
            host=r["host"],
            agent_id=r["agent_id"],
            online=r["online"],
            busy=r["busy"] or r["leased"],
            task_id=r["current_task_id"] if r["busy"] else None,
            leased=r["leased"],
            lease_label=r["lease_label"],
        ).model_dump(mode="json")
        for r in rows
    ]
    return Reply(data=views)


async def custom_scripts(ctx: Context, q: ListCustomScripts) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM custom_scripts ORDER BY name")
    views = [
        CustomScriptView(
            name=r["name"],
            command=as_list(r["command"]),
            platform=r["platform"],
            timeout_secs=r["timeout_secs"],
            hosts=as_list(r["hosts"]),
            description=r["description"],
            registered_by=r["registered_by"],
            registered_at=r["registered_at"],
        ).model_dump(mode="json")
        for r in rows
    ]
    return Reply(data=views)


async def adb_hosts(ctx: Context, q: ListAdbHosts) -> Reply:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT a.agent_id, a.host, COALESCE(h.adb_enabled, false) AS adb_enabled,"
            " h.changed_by, h.changed_at FROM agents a"
            " LEFT JOIN host_settings h ON h.agent_id = a.agent_id ORDER BY a.agent_id"
        )
    data: list[dict[str, Any]] = [
        {
            "agent_id": r["agent_id"],
            "host": r["host"],
            "adb_enabled": r["adb_enabled"],
            "changed_by": r["changed_by"],
            "changed_at": r["changed_at"].isoformat() if r["changed_at"] else None,
        }
        for r in rows
    ]
    return Reply(data=data)


SESSION_ANSWERS: dict[type, Any] = {
    CheckLease: check_lease,
    ListLeases: list_leases,
    ListRpcDevices: rpc_devices,
    ListCustomScripts: custom_scripts,
    ListAdbHosts: adb_hosts,
}
