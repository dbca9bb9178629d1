"""Fleet-scale scheduling: device groups, recurring schedules and webhooks.

Every change is a command to the schedulers (an event in the log); reads are queries.
Webhook registration needs an admin key: a hook makes the scheduler POST to a URL of
the caller's choosing and carries a secret.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request

from fleet_api.auth import Caller, admin_caller
from fleet_api.docs import errors
from fleet_api.routes.params import MAX_ID, ApiCaller, CorrelationId
from fleet_api.scheduler import ask, run_command
from fleet_api.state import gateway
from fleet_api.text import require_storable
from fleet_contracts.commands import (
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
from fleet_contracts.envelope import Envelope
from fleet_contracts.groups import (
    CreateGroupRequest,
    GroupDevicesRequest,
    GroupNameRequest,
    GroupView,
)
from fleet_contracts.queries import (
    GetSchedule,
    GetWebhook,
    ListGroups,
    ListSchedules,
    ListWebhooks,
)
from fleet_contracts.schedules import ScheduleRequest, ScheduleView
from fleet_contracts.webhooks import WebhookRequest, WebhookView

router = APIRouter()
AdminCaller = Annotated[Caller, Depends(admin_caller)]

GroupId = Annotated[int, Path(ge=1, le=MAX_ID, description="the group's id")]
ScheduleId = Annotated[int, Path(ge=1, le=MAX_ID, description="the schedule's id")]
HookId = Annotated[int, Path(ge=1, le=MAX_ID, description="the webhook's id")]


def _dict(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {"result": data}


# Groups
@router.get(
    "/group",
    tags=["groups"],
    summary="Device groups and their members",
    response_model=Envelope[list[GroupView]],
    responses=errors(),
)
async def list_groups(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[GroupView]]:
    data = await ask(gateway(request), ListGroups(correlation_id=cid))
    return Envelope(data=[GroupView.model_validate(g) for g in data or []])


@router.post(
    "/group",
    tags=["groups"],
    summary="Create a group (optionally with devices); tasks and schedules may target it",
    response_model=Envelope[GroupView],
    responses=errors(409),
)
async def create_group(
    request: Request,
    body: Annotated[CreateGroupRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[GroupView]:
    require_storable(body.model_dump())
    command = CreateGroup(group=body, actor=caller.actor, correlation_id=cid)
    return Envelope(data=GroupView.model_validate(await run_command(gateway(request), command)))


@router.put(
    "/group/{group_id}",
    tags=["groups"],
    summary="Rename a group",
    response_model=Envelope[GroupView],
    responses=errors(404, 409),
)
async def rename_group(
    request: Request,
    group_id: GroupId,
    body: Annotated[GroupNameRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[GroupView]:
    require_storable(body.model_dump())
    command = RenameGroup(group_id=group_id, name=body.name, actor=caller.actor, correlation_id=cid)
    return Envelope(data=GroupView.model_validate(await run_command(gateway(request), command)))


@router.delete(
    "/group/{group_id}",
    tags=["groups"],
    summary="Delete a group (its devices and tasks stay)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404),
)
async def delete_group(
    request: Request, group_id: GroupId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = DeleteGroup(group_id=group_id, actor=caller.actor, correlation_id=cid)
    return Envelope(data=_dict(await run_command(gateway(request), command)))


@router.post(
    "/group/{group_id}/devices",
    tags=["groups"],
    summary="Add devices to a group",
    response_model=Envelope[GroupView],
    responses=errors(404),
)
async def add_devices(
    request: Request,
    group_id: GroupId,
    body: Annotated[GroupDevicesRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[GroupView]:
    require_storable(body.model_dump())
    command = ChangeGroupDevices(
        group_id=group_id, add=body.serials, actor=caller.actor, correlation_id=cid
    )
    return Envelope(data=GroupView.model_validate(await run_command(gateway(request), command)))


@router.delete(
    "/group/{group_id}/devices",
    tags=["groups"],
    summary="Remove devices from a group",
    response_model=Envelope[GroupView],
    responses=errors(404),
)
async def remove_devices(
    request: Request,
    group_id: GroupId,
    body: Annotated[GroupDevicesRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[GroupView]:
    require_storable(body.model_dump())
    command = ChangeGroupDevices(
        group_id=group_id, remove=body.serials, actor=caller.actor, correlation_id=cid
    )
    return Envelope(data=GroupView.model_validate(await run_command(gateway(request), command)))


# Schedules
@router.get(
    "/schedule",
    tags=["schedules"],
    summary="Recurring schedules, each with its next fire times",
    response_model=Envelope[list[ScheduleView]],
    responses=errors(),
)
async def list_schedules(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[ScheduleView]]:
    data = await ask(gateway(request), ListSchedules(correlation_id=cid))
    return Envelope(data=[ScheduleView.model_validate(s) for s in data or []])


@router.get(
    "/schedule/{schedule_id}",
    tags=["schedules"],
    summary="One schedule with its next fire times",
    response_model=Envelope[ScheduleView],
    responses=errors(404),
)
async def get_schedule(
    request: Request, schedule_id: ScheduleId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[ScheduleView]:
    data = await ask(gateway(request), GetSchedule(schedule_id=schedule_id, correlation_id=cid))
    return Envelope(data=ScheduleView.model_validate(data))


async def _define(
    request: Request, body: ScheduleRequest, schedule_id: int | None, caller: Caller, cid: str
) -> Envelope[ScheduleView]:
    require_storable(body.model_dump(mode="python", exclude_none=True))
    command = DefineSchedule(
        schedule_id=schedule_id, schedule=body, actor=caller.actor, correlation_id=cid
    )
    data = await run_command(gateway(request), command)
    return await get_schedule(request, data["id"], caller, cid)


@router.post(
    "/schedule",
    tags=["schedules"],
    summary="Create a recurring schedule (cron or weekday x time slots, in a time zone)",
    response_model=Envelope[ScheduleView],
    responses=errors(),
)
async def create_schedule(
    request: Request,
    body: Annotated[ScheduleRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[ScheduleView]:
    return await _define(request, body, None, caller, cid)


@router.put(
    "/schedule/{schedule_id}",
    tags=["schedules"],
    summary="Replace a schedule's definition; fires count from now on",
    response_model=Envelope[ScheduleView],
    responses=errors(404),
)
async def replace_schedule(
    request: Request,
    schedule_id: ScheduleId,
    body: Annotated[ScheduleRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[ScheduleView]:
    return await _define(request, body, schedule_id, caller, cid)


async def _enable(
    request: Request, schedule_id: int, enabled: bool, caller: Caller, cid: str
) -> Envelope[ScheduleView]:
    command = SetScheduleEnabled(
        schedule_id=schedule_id, enabled=enabled, actor=caller.actor, correlation_id=cid
    )
    await run_command(gateway(request), command)
    return await get_schedule(request, schedule_id, caller, cid)


@router.post(
    "/schedule/{schedule_id}/pause",
    tags=["schedules"],
    summary="Pause a schedule (no fires until resumed)",
    response_model=Envelope[ScheduleView],
    responses=errors(404),
)
async def pause_schedule(
    request: Request, schedule_id: ScheduleId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[ScheduleView]:
    return await _enable(request, schedule_id, False, caller, cid)


@router.post(
    "/schedule/{schedule_id}/resume",
    tags=["schedules"],
    summary="Resume a schedule; fires missed while paused are not taken",
    response_model=Envelope[ScheduleView],
    responses=errors(404),
)
async def resume_schedule(
    request: Request, schedule_id: ScheduleId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[ScheduleView]:
    return await _enable(request, schedule_id, True, caller, cid)


@router.delete(
    "/schedule/{schedule_id}",
    tags=["schedules"],
    summary="Delete a schedule (tasks it made stay)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404),
)
async def delete_schedule(
    request: Request, schedule_id: ScheduleId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = DeleteSchedule(schedule_id=schedule_id, actor=caller.actor, correlation_id=cid)
    return Envelope(data=_dict(await run_command(gateway(request), command)))


# Webhooks
@router.get(
    "/webhook",
    tags=["webhooks"],
    summary="Registered webhooks",
    response_model=Envelope[list[WebhookView]],
    responses=errors(),
)
async def list_webhooks(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[WebhookView]]:
    data = await ask(gateway(request), ListWebhooks(correlation_id=cid))
    return Envelope(data=[WebhookView.model_validate(h) for h in data or []])


@router.get(
    "/webhook/{hook_id}",
    tags=["webhooks"],
    summary="One webhook with its most recent delivery attempts",
    response_model=Envelope[WebhookView],
    responses=errors(404),
)
async def get_webhook(
    request: Request, hook_id: HookId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[WebhookView]:
    data = await ask(gateway(request), GetWebhook(hook_id=hook_id, correlation_id=cid))
    return Envelope(data=WebhookView.model_validate(data))


@router.post(
    "/webhook",
    tags=["webhooks"],
    summary="Register a webhook (admin); the answer shows its signing secret, once",
    response_model=Envelope[WebhookView],
    responses=errors(),
)
async def register_webhook(
    request: Request,
    body: Annotated[WebhookRequest, Body()],
    caller: AdminCaller,
    cid: CorrelationId,
) -> Envelope[WebhookView]:
    require_storable(body.model_dump())
    command = RegisterWebhook(hook=body, actor=caller.actor, correlation_id=cid)
    return Envelope(data=WebhookView.model_validate(await run_command(gateway(request), command)))


@router.delete(
    "/webhook/{hook_id}",
    tags=["webhooks"],
    summary="Delete a webhook (admin)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404),
)
async def delete_webhook(
    request: Request, hook_id: HookId, caller: AdminCaller, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = DeleteWebhook(hook_id=hook_id, actor=caller.actor, correlation_id=cid)
    return Envelope(data=_dict(await run_command(gateway(request), command)))
