"""The `command_results` table, its one owner: what each handled command answered, by
command id. It is how a redelivered command (JetStream may deliver any twice) gets its
first answer back instead of being applied again, and what `query.command.result`
reads; kept for `FLEET_SCHEDULER_COMMAND_RESULTS_KEEP_SECONDS`, longer than COMMANDS
keeps a message."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from fleet_contracts.commands import CommandResult


async def recorded(conn: asyncpg.Connection, command_id: str) -> CommandResult | None:
    raw = await conn.fetchval(
        "SELECT result FROM command_results WHERE command_id = $1", command_id
    )
    return None if raw is None else CommandResult.model_validate(raw)


async def recorded_among(
    conn: asyncpg.Connection, command_ids: Sequence[str]
) -> dict[str, CommandResult]:
    rows = await conn.fetch(
        "SELECT command_id, result FROM command_results WHERE command_id = ANY($1::text[])",
        list(command_ids),
    )
    return {r["command_id"]: CommandResult.model_validate(r["result"]) for r in rows}


async def record(conn: asyncpg.Connection, results: Sequence[CommandResult]) -> None:
    """In the transaction that applied the commands: the answer commits with them."""
    await conn.execute(
        "INSERT INTO command_results (command_id, result)"
        " SELECT * FROM unnest($1::text[], $2::jsonb[])",
        [r.command_id for r in results],
        [r.model_dump(mode="json") for r in results],
    )


async def record_failure(conn: asyncpg.Connection, result: CommandResult) -> CommandResult:
    """A command that could not be applied: its failure, unless another delivery's answer
    was recorded meanwhile (that one stands)."""
    await conn.execute(
        "INSERT INTO command_results (command_id, result) VALUES ($1, $2::jsonb)"
        " ON CONFLICT (command_id) DO NOTHING",
        result.command_id,
        result.model_dump(mode="json"),
    )
    return await recorded(conn, result.command_id) or result


async def prune(conn: asyncpg.Connection, keep_seconds: float) -> None:
    await conn.execute(
        "DELETE FROM command_results WHERE recorded_at < now() - make_interval(secs => $1)",
        keep_seconds,
    )
