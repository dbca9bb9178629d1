"""Read models of leases, custom scripts and per-host settings, kept from the log in
the transaction that appends the events (see `projections.project`)."""

from __future__ import annotations

import json

import asyncpg

from fleet_contracts.events import (
    CustomScriptRegistered,
    CustomScriptRemoved,
    DomainEvent,
    HostAdbSet,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    LeaseRenewed,
)
from fleet_scheduler.store import RecordedEvent

SESSION_TABLES = ("leases", "custom_scripts", "host_settings")
SESSION_EVENTS = (
    LeaseGranted,
    LeaseRenewed,
    LeaseReleased,
    LeaseExpired,
    CustomScriptRegistered,
    CustomScriptRemoved,
    HostAdbSet,
)


async def project(conn: asyncpg.Connection, event: DomainEvent, rec: RecordedEvent) -> None:
    match event:
        case LeaseGranted():
            await conn.execute(
                "INSERT INTO leases (lease_id, serial, agent_id, label, actor, ttl_secs,"
                " task_id, dispatch_id, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                event.lease_id,
                event.serial,
                event.agent_id,
                event.label,
                event.actor,
                event.ttl_secs,
                event.task_id,
                event.dispatch_id,
                rec.recorded_at,
                event.expires_at,
            )
        case LeaseRenewed():
            await conn.execute(
                "UPDATE leases SET expires_at = $2, ttl_secs = $3 WHERE lease_id = $1",
                event.lease_id,
                event.expires_at,
                event.ttl_secs,
            )
        case LeaseReleased() | LeaseExpired():
            await conn.execute("DELETE FROM leases WHERE lease_id = $1", event.lease_id)
        case CustomScriptRegistered():
            await conn.execute(
                "INSERT INTO custom_scripts (name, command, platform, timeout_secs, hosts,"
                " description, registered_by, registered_at)"
                " VALUES ($1, $2::jsonb, $3, $4, $5::jsonb, $6, $7, $8)"
                " ON CONFLICT (name) DO UPDATE SET command = $2::jsonb, platform = $3,"
                " timeout_secs = $4, hosts = $5::jsonb, description = $6,"
                " registered_by = $7, registered_at = $8",
                event.name,
                event.command,
                event.platform,
                event.timeout_secs,
                event.hosts,
                event.description,
                event.actor,
                rec.recorded_at,
            )
        case CustomScriptRemoved():
            await conn.execute("DELETE FROM custom_scripts WHERE name = $1", event.name)
        case HostAdbSet():
            await conn.execute(
                "INSERT INTO host_settings (agent_id, adb_enabled, changed_by, changed_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id) DO UPDATE"
                " SET adb_enabled = $2, changed_by = $3, changed_at = $4",
                event.agent_id,
                event.enabled,
                event.actor,
                rec.recorded_at,
            )


def as_list(value: object) -> list[str]:
    """A jsonb array column as a list, whichever codec the connection has."""
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value] if isinstance(value, list) else []
