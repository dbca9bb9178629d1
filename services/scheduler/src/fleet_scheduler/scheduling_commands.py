"""The commands of groups, schedules and webhooks, routed to their modules.

`commands._decide` hands over every command it does not know itself; each module here
decides its own (pure functions over what it loads) and returns an Outcome.
"""

from __future__ import annotations

import asyncpg

from fleet_contracts.commands import (
    AnyCommand,
    ChangeGroupDevices,
    CreateGroup,
    DefineSchedule,
    DeleteGroup,
    DeleteSchedule,
    DeleteWebhook,
    RegisterWebhook,
    RenameGroup,
    SetScheduleEnabled,
)
from fleet_scheduler.context import Context
from fleet_scheduler.handlers import Outcome

GROUP_COMMANDS = (CreateGroup, RenameGroup, DeleteGroup, ChangeGroupDevices)
SCHEDULE_COMMANDS = (DefineSchedule, SetScheduleEnabled, DeleteSchedule)
WEBHOOK_COMMANDS = (RegisterWebhook, DeleteWebhook)


def handles(cmd: AnyCommand) -> bool:
    return isinstance(cmd, GROUP_COMMANDS + SCHEDULE_COMMANDS + WEBHOOK_COMMANDS)


async def decide(conn: asyncpg.Connection, ctx: Context, cmd: AnyCommand) -> Outcome:
    # Imported here: these modules create tasks through `commands`, which imports us.
    from fleet_scheduler import groups, recurring, webhooks

    if isinstance(cmd, GROUP_COMMANDS):
        return await groups.decide(conn, cmd)
    if isinstance(cmd, SCHEDULE_COMMANDS):
        return await recurring.decide(conn, ctx, cmd)
    assert isinstance(cmd, WEBHOOK_COMMANDS)
    return await webhooks.decide(conn, cmd)
