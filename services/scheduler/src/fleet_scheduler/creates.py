"""Creates decided together: a run of CreateTasks from one fetched batch reads the
devices, accounts and custom scripts they name in one query each and draws all their
task ids at once, instead of paying those round trips per command while the events
lock is held.

Each create is still judged alone (its own refusal, its own result), in order: the
device limit of a create counts the phones of the creates before it in the run, as it
would have had they been appended one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from fleet_contracts.commands import CreateTasks
from fleet_scheduler import groups, handlers, library, library_reads, session_commands
from fleet_scheduler.context import Context
from fleet_scheduler.device_limit import check_device_limit, devices_in_use
from fleet_scheduler.errors import Rejected
from fleet_scheduler.handlers import Outcome, Target


@dataclass
class _Reads:
    """What the run's creates need from the read models, read once for all of them."""

    known_serials: set[str] = field(default_factory=set)
    accounts_by_serial: dict[str, list[str]] = field(default_factory=dict)
    serial_of_account: dict[str, str] = field(default_factory=dict)
    custom_scripts: set[str] = field(default_factory=set)


async def _read(conn: asyncpg.Connection, cmds: Sequence[CreateTasks]) -> _Reads:
    reads = _Reads()
    serials = sorted(
        {s for c in cmds if c.request.usernames is None for s in c.request.serials or []}
    )
    multi = sorted(
        {
            s
            for c in cmds
            if c.request.usernames is None and c.request.enable_multi_account
            for s in c.request.serials or []
        }
    )
    usernames = sorted({u for c in cmds for u in c.request.usernames or []})
    names = sorted({c.request.script_name for c in cmds})
    if not cmds:
        return reads
    if serials:
        rows = await conn.fetch(
            "SELECT serial FROM devices WHERE serial = ANY($1::text[])", serials
        )
        reads.known_serials = {r["serial"] for r in rows}
    if multi:
        for r in await conn.fetch(
            "SELECT username, serial FROM accounts WHERE serial = ANY($1::text[])", multi
        ):
            reads.accounts_by_serial.setdefault(r["serial"], []).append(r["username"])
    if usernames:
        rows = await conn.fetch(
            "SELECT username, serial FROM accounts WHERE username = ANY($1::text[])", usernames
        )
        reads.serial_of_account = {r["username"]: r["serial"] for r in rows}
    rows = await conn.fetch("SELECT name FROM custom_scripts WHERE name = ANY($1::text[])", names)
    reads.custom_scripts = {r["name"] for r in rows}
    return reads


@dataclass
class _Planned:
    cmd: CreateTasks
    config: dict[str, Any]
    targets: list[Target]


async def decide_creates(
    conn: asyncpg.Connection,
    ctx: Context,
    cmds: Sequence[CreateTasks],
    plugins: Sequence[dict[str, Any]],
) -> list[Outcome | Rejected]:
    """Each create's outcome (events not yet appended) or its refusal, in order."""
    checked: list[tuple[CreateTasks, dict[str, Any]] | Rejected] = []
    for cmd, schemas in zip(cmds, plugins, strict=True):
        try:
            config = handlers.check_script(cmd, schemas)
            checked.append((await groups.resolve_create(conn, cmd), config))
        except Rejected as exc:
            checked.append(exc)
    reads = await _read(conn, [c[0] for c in checked if not isinstance(c, Rejected)])
    verdicts: list[_Planned | Rejected] = []
    # Phones each key's creates earlier in this run take (not yet in the tasks table).
    taken: dict[str, set[str]] = {}
    in_use: dict[str, set[str]] = {}
    for item in checked:
        if isinstance(item, Rejected):
            verdicts.append(item)
            continue
        cmd, config = item
        try:
            targets = handlers.plan_targets(
                cmd, reads.known_serials, reads.accounts_by_serial, reads.serial_of_account
            )
            if cmd.request.script_name in reads.custom_scripts:
                await session_commands.check_custom_targets(conn, cmd, targets)
            if cmd.device_limit is not None:
                # A batch with a device limit holds every partition's lock from its
                # start (`commands._late`), so two creates of one key cannot both pass
                # on the same count.
                if cmd.actor not in in_use:
                    in_use[cmd.actor] = await devices_in_use(conn, cmd.actor)
                held = in_use[cmd.actor] | taken.get(cmd.actor, set())
                check_device_limit(cmd.device_limit, held, (t.serial for t in targets))
        except Rejected as exc:
            verdicts.append(exc)
            continue
        taken.setdefault(cmd.actor, set()).update(t.serial for t in targets)
        verdicts.append(_Planned(cmd, config, targets))
    wanted = sum(len(v.targets) for v in verdicts if isinstance(v, _Planned))
    ids = iter(
        [
            r[0]
            for r in await conn.fetch(
                "SELECT nextval('task_ids') FROM generate_series(1, $1)", wanted
            )
        ]
        if wanted
        else []
    )
    now = ctx.clock()
    out: list[Outcome | Rejected] = []
    for verdict in verdicts:
        if isinstance(verdict, Rejected):
            out.append(verdict)
            continue
        task_ids = [next(ids) for _ in verdict.targets]
        try:
            out.append(await _made(conn, ctx, verdict, task_ids, now))
        except Rejected as exc:
            out.append(exc)
    return out


async def _made(
    conn: asyncpg.Connection, ctx: Context, plan: _Planned, task_ids: list[int], now: Any
) -> Outcome:
    request = plan.cmd.request
    outcome = handlers.create_tasks(
        plan.cmd, plan.config, plan.targets, task_ids, now, ctx.settings.zone, ctx.rng
    )
    pick = library.pick_request(request.script_name, plan.config)
    if pick is None:
        return outcome
    found = await library_reads.load_for_pick(conn, pick)
    return library.pick_for_tasks(outcome, pick, found, ctx.rng)
