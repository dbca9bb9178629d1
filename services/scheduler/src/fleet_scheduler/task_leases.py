"""Equipping a custom script's run at dispatch: the registered program goes into the
RunTask, and a lease is granted for the run in the claim's own transaction, so the
program's first call on the phone finds its lease recorded.

The session id (the secret) travels only in the RunTask; the log keeps its digest. A
RunTask sent again later (`dispatch.resend_unconfirmed`) carries no program: an agent
that already runs it answers as for any repeat, one that never got it refuses, and the
task is requeued and dispatched afresh with a new lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from fleet_contracts.scripts import BUILTIN_CONFIGS
from fleet_contracts.sessions import CustomProgram, lease_id_of, new_session_id
from fleet_scheduler import leases
from fleet_scheduler.session_projections import as_list
from fleet_scheduler.uow import UnitOfWork

if TYPE_CHECKING:
    from fleet_scheduler.dispatch import Claim


async def equip(uow: UnitOfWork, claims: Sequence[Claim]) -> list[Claim]:
    names = sorted({c.run.script_name for c in claims} - set(BUILTIN_CONFIGS))
    if not names:
        return list(claims)
    rows = await uow.conn.fetch("SELECT * FROM custom_scripts WHERE name = ANY($1::text[])", names)
    programs = {
        r["name"]: CustomProgram(
            name=r["name"],
            command=as_list(r["command"]),
            platform=r["platform"],
            timeout_secs=r["timeout_secs"],
            hosts=as_list(r["hosts"]),
        )
        for r in rows
    }
    out: list[Claim] = []
    events = []
    for claim in claims:
        program = programs.get(claim.run.script_name)
        if program is None:
            out.append(claim)
            continue
        session_id = new_session_id()
        run = claim.run
        events.append(
            leases.for_task(
                lease_id_of(session_id),
                run.serial,
                claim.agent_id,
                run.task_id,
                run.dispatch_id,
                program.name,
            )
        )
        run = run.model_copy(update={"program": program, "session_id": session_id})
        out.append(replace(claim, run=run))
    await uow.append(events)
    return out
