"""Registering custom scripts (admin keys only), and a task's log: what its program
printed, gathered from the task's history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import PlainTextResponse

from fleet_api.auth import Caller, admin_caller
from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.routes.params import ApiCaller, CorrelationId, TaskId
from fleet_api.scheduler import ask, run_command
from fleet_api.state import Gateway, gateway
from fleet_contracts.agent import OUTPUT_STEP
from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import RegisterCustomScript, RemoveCustomScript
from fleet_contracts.envelope import Envelope
from fleet_contracts.queries import ListCustomScripts, TaskEvents
from fleet_contracts.scripts import BUILTIN_CONFIGS, ScriptSpec
from fleet_contracts.sessions import NAME_PATTERN, CustomScriptRequest, CustomScriptView

router = APIRouter(tags=["scripts"])
AdminCaller = Annotated[Caller, Depends(admin_caller)]
CUSTOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "free-form; the program reads it as JSON from TIKMATRIX_SCRIPT_CONFIG",
}


async def custom_scripts(gw: Gateway, cid: str = "") -> list[CustomScriptView]:
    data = await ask(gw, ListCustomScripts(correlation_id=cid))
    return [CustomScriptView.model_validate(d) for d in data or []]


async def catalogue_with_custom(gw: Gateway, name: str, cid: str) -> dict[str, ScriptSpec]:
    """The plugins `check_config` knows, plus `name` when it is a custom script: asked
    of the scheduler only for a name neither built in nor announced by an agent."""
    plugins = dict(gw.scripts.entries)
    if name in BUILTIN_CONFIGS or name in plugins:
        return plugins
    try:
        known = await custom_scripts(gw, cid)
    except ApiError as exc:
        if exc.code != ErrorCode.UNAVAILABLE:
            raise
        # No scheduler to ask: judge by what this gateway knows (40003 for the name).
        return plugins
    for script in known:
        if script.name == name:
            plugins[name] = ScriptSpec(
                name=name, description=script.description, config_schema=CUSTOM_SCHEMA
            )
    return plugins


@router.post(
    "/script",
    summary="Register (or replace) a custom script: a program run without a shell",
    response_model=Envelope[dict[str, Any]],
    responses=errors(),
)
async def register(
    request: Request,
    body: Annotated[CustomScriptRequest, Body()],
    caller: AdminCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    command = RegisterCustomScript(script=body, actor=caller.actor, correlation_id=cid)
    return Envelope(data=await run_command(gateway(request), command))


@router.delete(
    "/script/{name}",
    summary="Remove a custom script (refused while tasks still wait for it)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404, 409),
)
async def remove(
    request: Request,
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    caller: AdminCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    command = RemoveCustomScript(name=name, actor=caller.actor, correlation_id=cid)
    return Envelope(data=await run_command(gateway(request), command))


@router.get(
    "/task/{task_id}/log",
    summary="What the task's program printed (stdout and stderr, bounded), as text",
    response_class=PlainTextResponse,
    responses=errors(404),
)
async def task_log(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> PlainTextResponse:
    history = await ask(gateway(request), TaskEvents(task_id=task_id, correlation_id=cid))
    text = "".join(
        str(e["data"].get("message", ""))
        for e in history or []
        if e["type"] == "task.progressed" and e["data"].get("step") == OUTPUT_STEP
    )
    return PlainTextResponse(text)
