"""Device groups: the decisions (pure functions over what the read models hold) and the
loads that feed them.

A group is addressed by id in its own endpoints and by name where a target is given
(`POST /task {"group": "shop-a"}`, a schedule's `group`): names are unique, and a
create resolves the name to the group's serials once, recording the name on each task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import (
    ChangeGroupDevices,
    CreateGroup,
    CreateTasks,
    DeleteGroup,
    RenameGroup,
)
from fleet_contracts.events import (
    GroupCreated,
    GroupDeleted,
    GroupDevicesAdded,
    GroupDevicesRemoved,
    GroupRenamed,
)
from fleet_contracts.rest import MAX_TARGETS
from fleet_scheduler.errors import Rejected
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.store import NewEvent


def group_stream_id(group_id: int) -> str:
    return f"group-{group_id}"


@dataclass(frozen=True)
class GroupState:
    id: int
    name: str
    serials: frozenset[str]


def _unknown_devices(serials: Iterable[str], known: set[str], field: str) -> None:
    unknown = [s for s in serials if s not in known]
    if unknown:
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS, f"{field}: unknown device(s): {', '.join(unknown)}"
        )


def _name_free(name: str, names: Mapping[str, int], group_id: int | None = None) -> None:
    holder = names.get(name)
    if holder is not None and holder != group_id:
        raise Rejected(ErrorCode.WRONG_STATE, f"name: group {name!r} exists already (id {holder})")


def _found(group_id: int, group: GroupState | None) -> GroupState:
    if group is None:
        raise Rejected(ErrorCode.NOT_FOUND, f"group {group_id} not found")
    return group


def create_group(
    cmd: CreateGroup, group_id: int, names: Mapping[str, int], known: set[str]
) -> Outcome:
    _name_free(cmd.group.name, names)
    _unknown_devices(cmd.group.serials, known, "serials")
    stream = group_stream_id(group_id)
    events = [NewEvent(stream, GroupCreated(group_id=group_id, name=cmd.group.name), 0)]
    if cmd.group.serials:
        added = GroupDevicesAdded(group_id=group_id, serials=cmd.group.serials)
        events.append(NewEvent(stream, added, 1))
    view = {"id": group_id, "name": cmd.group.name, "serials": cmd.group.serials}
    return Outcome(events=events, data=view)


def _not_a_schedule_target(group: GroupState, schedules: list[int], action: str) -> None:
    """Schedules name their group: renaming or deleting it would leave them firing at
    nothing, so the operator changes them first."""
    if schedules:
        listed = ", ".join(str(s) for s in schedules)
        raise Rejected(
            ErrorCode.WRONG_STATE,
            f"group {group.name!r} is the target of schedule(s) {listed}; "
            f"change or delete them before you {action} it",
        )


def rename_group(
    cmd: RenameGroup,
    group: GroupState | None,
    names: Mapping[str, int],
    schedules: list[int] | None = None,
) -> Outcome:
    found = _found(cmd.group_id, group)
    if cmd.name != found.name:
        _not_a_schedule_target(found, schedules or [], "rename")
    _name_free(cmd.name, names, found.id)
    event = GroupRenamed(group_id=found.id, name=cmd.name)
    return Outcome(
        events=[NewEvent(group_stream_id(found.id), event)],
        data={"id": found.id, "name": cmd.name, "serials": sorted(found.serials)},
    )


def delete_group(
    cmd: DeleteGroup, group: GroupState | None, schedules: list[int] | None = None
) -> Outcome:
    found = _found(cmd.group_id, group)
    _not_a_schedule_target(found, schedules or [], "delete")
    return Outcome(
        events=[NewEvent(group_stream_id(found.id), GroupDeleted(group_id=found.id))],
        data={"id": found.id},
    )


def change_devices(cmd: ChangeGroupDevices, group: GroupState | None, known: set[str]) -> Outcome:
    """Add known devices / remove members; listing one already in (or out) is no change."""
    found = _found(cmd.group_id, group)
    _unknown_devices(cmd.add, known, "serials")
    add = [s for s in dict.fromkeys(cmd.add) if s not in found.serials]
    remove = [s for s in dict.fromkeys(cmd.remove) if s in found.serials]
    if len(found.serials) + len(add) > MAX_TARGETS:
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS, f"serials: a group holds at most {MAX_TARGETS} devices"
        )
    stream = group_stream_id(found.id)
    events: list[NewEvent] = []
    if add:
        events.append(NewEvent(stream, GroupDevicesAdded(group_id=found.id, serials=add)))
    if remove:
        events.append(NewEvent(stream, GroupDevicesRemoved(group_id=found.id, serials=remove)))
    members = (found.serials | set(add)) - set(remove)
    return Outcome(
        events=events, data={"id": found.id, "name": found.name, "serials": sorted(members)}
    )


def targets_of(group_name: str, group: GroupState | None, field: str = "group") -> list[str]:
    """The serials a group target stands for, at this moment."""
    if group is None:
        raise Rejected(ErrorCode.INVALID_PARAMETERS, f"{field}: unknown group {group_name!r}")
    if not group.serials:
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS, f"{field}: group {group_name!r} has no devices"
        )
    return sorted(group.serials)


# Loads
async def load_group(
    conn: asyncpg.Connection, *, group_id: int | None = None, name: str | None = None
) -> GroupState | None:
    row = await conn.fetchrow(
        "SELECT g.id, g.name, COALESCE(array_agg(d.serial) FILTER (WHERE d.serial IS NOT NULL),"
        " '{}') AS serials FROM groups g LEFT JOIN group_devices d ON d.group_id = g.id"
        " WHERE g.id = $1 OR g.name = $2 GROUP BY g.id",
        group_id,
        name,
    )
    if row is None:
        return None
    return GroupState(row["id"], row["name"], frozenset(row["serials"]))


async def _names(conn: asyncpg.Connection, name: str) -> dict[str, int]:
    row = await conn.fetchrow("SELECT id FROM groups WHERE name = $1", name)
    return {} if row is None else {name: row["id"]}


async def _known(conn: asyncpg.Connection, serials: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT serial FROM devices WHERE serial = ANY($1::text[])", serials)
    return {r["serial"] for r in rows}


async def _schedules_of(conn: asyncpg.Connection, group: GroupState | None) -> list[int]:
    if group is None:
        return []
    rows = await conn.fetch(
        "SELECT id FROM schedules WHERE spec->>'group' = $1 ORDER BY id", group.name
    )
    return [r["id"] for r in rows]


async def decide(
    conn: asyncpg.Connection, cmd: CreateGroup | RenameGroup | DeleteGroup | ChangeGroupDevices
) -> Outcome:
    match cmd:
        case CreateGroup():
            group_id = await conn.fetchval("SELECT nextval('group_ids')")
            return create_group(
                cmd,
                group_id,
                await _names(conn, cmd.group.name),
                await _known(conn, cmd.group.serials),
            )
        case RenameGroup():
            group = await load_group(conn, group_id=cmd.group_id)
            schedules = await _schedules_of(conn, group)
            return rename_group(cmd, group, await _names(conn, cmd.name), schedules)
        case DeleteGroup():
            group = await load_group(conn, group_id=cmd.group_id)
            return delete_group(cmd, group, await _schedules_of(conn, group))
        case ChangeGroupDevices():
            group = await load_group(conn, group_id=cmd.group_id)
            return change_devices(cmd, group, await _known(conn, cmd.add))


async def resolve_create(conn: asyncpg.Connection, cmd: CreateTasks) -> CreateTasks:
    """A group-targeted create as the serials create it stands for (the group kept)."""
    name = cmd.request.group
    if name is None:
        return cmd
    serials = targets_of(name, await load_group(conn, name=name))
    request = cmd.request.model_copy(update={"serials": serials})
    return cmd.model_copy(update={"request": request})
