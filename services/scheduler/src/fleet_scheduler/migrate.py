"""Ordered SQL migrations (`migrations/NNN_name.sql`), applied at start and recorded.

Two schedulers starting at once must not both apply a file: a session advisory lock
serializes them, and the second finds the version already recorded.

A file may hold `@PARTITIONS@`: the partition count of the log (`partitions.py`),
fixed when that file is applied (`FLEET_SCHEDULER_PARTITIONS` at install). A later
start with another setting keeps the installed count (`installed_partitions`).
"""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

from fleet_scheduler import partitions as parts

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 0x5C4ED001


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in order."""
    found = []
    for entry in resources.files("fleet_scheduler.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(number), name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection, partitions: int = parts.DEFAULT_COUNT) -> list[int]:
    """Apply what is missing; return the versions applied now. `partitions`: the count a
    new log is installed with."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql.replace("@PARTITIONS@", str(int(partitions))))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("migration.applied", version=version, name=name)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def installed_partitions(conn: asyncpg.Connection) -> int:
    """The log's partition count, fixed when it was installed."""
    return int(await conn.fetchval("SELECT count(*) - 1 FROM log_partitions"))
