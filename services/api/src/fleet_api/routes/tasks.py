"""The seeds' task endpoints: create, list, get, delete, batch delete, stop, retry,
retry-all, stats, plus a task's own event history.

Ids are matched as digits only (`{task_id:task_id}`), so the fixed paths (`/task/batch`,
`/task/stats`, `/task/retry-all`) are never read as an id and a method they do not
serve is a 405 whose `Allow` names exactly the methods they do.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response

from fleet_api.catalogue import check_config
from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.routes.custom_scripts import catalogue_with_custom
from fleet_api.routes.params import MAX_ID, ApiCaller, CorrelationId, TaskId, Text
from fleet_api.scheduler import ask, ask_envelope, run_command
from fleet_api.state import gateway
from fleet_api.text import require_storable
from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.commands import (
    BatchDeleteTasks,
    CreateTasks,
    DeleteTask,
    RetryAllTasks,
    RetryTask,
    StopTask,
)
from fleet_contracts.envelope import Envelope
from fleet_contracts.queries import GetStats, GetTask, ListTasks, TaskEvents
from fleet_contracts.rest import (
    BatchDeleteRequest,
    BatchDeleteResult,
    CreateTaskRequest,
    CreateTaskResult,
    RetryAllResult,
    TaskEventView,
    TaskPage,
    TaskStats,
    TaskView,
)

router = APIRouter(prefix="/task", tags=["tasks"])
JSON = "application/json"


def idempotent_id(actor: str, key: str) -> str:
    """The create command's id for an Idempotency-Key: the same key, the same command."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{actor}:{key}").hex


@router.post(
    "",
    summary="Create tasks for devices (serials) or accounts (usernames)",
    response_model=Envelope[CreateTaskResult],
    responses=errors(409, 413),
    description="Exactly one of `serials` (device mode) or `usernames` (username mode). "
    "A key's plan limits the phones its unfinished tasks may occupy (`device_limit` of "
    "`/license/check`): a create that would exceed it is refused with 40301 naming the "
    "limit. Keyless local mode has no limit.",
)
async def create_task(
    request: Request,
    body: Annotated[CreateTaskRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="the same key with the same body returns the first create's result "
            "instead of creating twice; the same key with another body is a 409 (40901)",
        ),
    ] = None,
) -> Envelope[CreateTaskResult]:
    gw = gateway(request)
    require_storable(body.model_dump(mode="python", exclude_none=True))
    plugins = await catalogue_with_custom(gw, body.script_name, cid)
    config = check_config(body.script_name, body.script_config, plugins)
    ids: dict[str, Any] = {"correlation_id": cid}
    if idempotency_key:
        ids["message_id"] = idempotent_id(caller.actor, idempotency_key)
    command = CreateTasks(
        request=body.model_copy(update={"script_config": config}),
        source=TaskSource.API,
        actor=caller.actor,
        device_limit=caller.license.device_limit,
        **ids,
    )
    data = await run_command(gw, command, key=idempotency_key or None)
    return Envelope(data=CreateTaskResult.model_validate(data))


@router.get(
    "",
    summary="List tasks, filtered and paged",
    response_model=Envelope[TaskPage],
    responses=errors(),
)
async def list_tasks(
    request: Request,
    caller: ApiCaller,
    cid: CorrelationId,
    status: Annotated[
        int | None, Query(ge=0, le=3, description="0 pending, 1 running, 2 completed, 3 failed")
    ] = None,
    serial: Text = None,
    script_name: Text = None,
    source: Annotated[TaskSource | None, Query(description='"ui" or "api"')] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000, description="page number")] = 1,
    page_size: Annotated[int, Query(ge=1, le=100, description="items per page")] = 20,
) -> Response:
    query = ListTasks(
        correlation_id=cid,
        status=status,
        serial=serial,
        script_name=script_name,
        source=source,
        page=page,
        page_size=page_size,
    )
    # The declared model documents the answer; the scheduler's bytes are sent as they are.
    return Response(await ask_envelope(gateway(request), query), media_type=JSON)


@router.delete(
    "/batch",
    summary="Delete several tasks (running ones are stopped first)",
    response_model=Envelope[BatchDeleteResult],
    responses=errors(413),
)
async def batch_delete(
    request: Request,
    body: Annotated[BatchDeleteRequest, Body(examples=[{"task_ids": [1, 2, 3]}])],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[BatchDeleteResult]:
    for i, task_id in enumerate(body.task_ids):
        if not 1 <= task_id <= MAX_ID:
            raise ApiError(
                ErrorCode.INVALID_PARAMETERS,
                f"task_ids[{i}]: {task_id} is not a task id (1 to {MAX_ID})",
            )
    command = BatchDeleteTasks(task_ids=body.task_ids, actor=caller.actor, correlation_id=cid)
    data = await run_command(gateway(request), command)
    return Envelope(data=BatchDeleteResult.model_validate(data))


@router.get(
    "/stats",
    summary="Task counts by status",
    response_model=Envelope[TaskStats],
    responses=errors(),
)
async def stats(request: Request, caller: ApiCaller, cid: CorrelationId) -> Response:
    return Response(
        await ask_envelope(gateway(request), GetStats(correlation_id=cid)), media_type=JSON
    )


@router.post(
    "/retry-all",
    summary="Retry every failed task",
    response_model=Envelope[RetryAllResult],
    responses=errors(),
)
async def retry_all(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[RetryAllResult]:
    command = RetryAllTasks(actor=caller.actor, correlation_id=cid)
    data = await run_command(gateway(request), command)
    return Envelope(data=RetryAllResult.model_validate(data))


@router.get(
    "/{task_id:task_id}",
    summary="One task",
    response_model=Envelope[TaskView],
    responses=errors(404),
)
async def get_task(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[TaskView]:
    data = await ask(gateway(request), GetTask(task_id=task_id, correlation_id=cid))
    return Envelope(data=TaskView.model_validate(data))


@router.delete(
    "/{task_id:task_id}",
    summary="Delete a task (a running one is stopped first)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404),
)
async def delete_task(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = DeleteTask(task_id=task_id, actor=caller.actor, correlation_id=cid)
    return Envelope(data=_as_dict(await run_command(gateway(request), command)))


@router.post(
    "/{task_id:task_id}/stop",
    summary="Stop a task; it ends failed with reason 'stopped'",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404, 409),
)
async def stop_task(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = StopTask(task_id=task_id, actor=caller.actor, correlation_id=cid)
    return Envelope(data=_as_dict(await run_command(gateway(request), command)))


@router.post(
    "/{task_id:task_id}/retry",
    summary="Move a failed task back to pending",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404, 409),
)
async def retry_task(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = RetryTask(task_id=task_id, actor=caller.actor, correlation_id=cid)
    return Envelope(data=_as_dict(await run_command(gateway(request), command)))


@router.get(
    "/{task_id:task_id}/events",
    summary="The task's whole history from the event log",
    response_model=Envelope[list[TaskEventView]],
    responses=errors(404),
)
async def task_events(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[TaskEventView]]:
    data = await ask(gateway(request), TaskEvents(task_id=task_id, correlation_id=cid))
    return Envelope(data=[TaskEventView.model_validate(item) for item in data or []])


def _as_dict(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {"result": data}
