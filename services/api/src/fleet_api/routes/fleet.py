"""Beyond the seeds: the devices the agents report, the accounts on them, and the
script catalogue (built-ins and plugins, each with its config JSON Schema)."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Path, Query, Request

from fleet_api.catalogue import all_specs
from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.routes.custom_scripts import CUSTOM_SCHEMA, custom_scripts
from fleet_api.routes.params import NO_NUL, ApiCaller, CorrelationId, Text
from fleet_api.scheduler import ask, run_command
from fleet_api.state import gateway
from fleet_api.text import require_storable
from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import RegisterAccount, RemoveAccount
from fleet_contracts.envelope import Envelope
from fleet_contracts.queries import ListAccounts, ListDevices
from fleet_contracts.rest import (
    FLEET_PAGE_DEFAULT,
    FLEET_PAGE_MAX,
    AccountPage,
    AccountRequest,
    DevicePage,
)
from fleet_contracts.scripts import ScriptSpec
from fleet_contracts.sessions import CustomScriptSpec

router = APIRouter()
log = structlog.get_logger(__name__)


Page = Annotated[int, Query(ge=1, le=1_000_000, description="page number")]
PageSize = Annotated[
    int,
    Query(ge=1, le=FLEET_PAGE_MAX, description=f"items per page (1..{FLEET_PAGE_MAX})"),
]


@router.get(
    "/device",
    tags=["devices"],
    summary="Devices, paged by serial: agent/host, model, online, busy, current task",
    response_model=Envelope[DevicePage],
    responses=errors(),
)
async def list_devices(
    request: Request,
    caller: ApiCaller,
    cid: CorrelationId,
    online: Annotated[
        bool | None, Query(description="only online (true) or offline (false)")
    ] = None,
    page: Page = 1,
    page_size: PageSize = FLEET_PAGE_DEFAULT,
) -> Envelope[DevicePage]:
    query = ListDevices(online=online, page=page, page_size=page_size, correlation_id=cid)
    data = await ask(gateway(request), query)
    return Envelope(data=DevicePage.model_validate(data))


@router.get(
    "/account",
    tags=["accounts"],
    summary="Accounts, paged by username, and the device each is signed in on",
    response_model=Envelope[AccountPage],
    responses=errors(),
)
async def list_accounts(
    request: Request,
    caller: ApiCaller,
    cid: CorrelationId,
    serial: Text = None,
    page: Page = 1,
    page_size: PageSize = FLEET_PAGE_DEFAULT,
) -> Envelope[AccountPage]:
    query = ListAccounts(serial=serial, page=page, page_size=page_size, correlation_id=cid)
    data = await ask(gateway(request), query)
    return Envelope(data=AccountPage.model_validate(data))


@router.post(
    "/account",
    tags=["accounts"],
    summary="Tie a username to the device that holds it (for username mode)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(413),
)
async def register_account(
    request: Request,
    body: Annotated[AccountRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    require_storable(body.model_dump())
    command = RegisterAccount(account=body, actor=caller.actor, correlation_id=cid)
    data = await run_command(gateway(request), command)
    return Envelope(data=data if isinstance(data, dict) else {"result": data})


@router.delete(
    "/account/{username}",
    tags=["accounts"],
    summary="Forget an account registered through the API",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404),
)
async def remove_account(
    request: Request,
    username: Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    command = RemoveAccount(username=username, actor=caller.actor, correlation_id=cid)
    data = await run_command(gateway(request), command)
    return Envelope(data=data if isinstance(data, dict) else {"result": data})


@router.get(
    "/script",
    tags=["scripts"],
    summary="The script catalogue with each script's config JSON Schema, custom ones too",
    response_model=Envelope[list[ScriptSpec | CustomScriptSpec]],
    responses=errors(),
)
async def list_scripts(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[ScriptSpec | CustomScriptSpec]]:
    gw = gateway(request)
    try:
        views = await custom_scripts(gw, cid)
    except ApiError as exc:
        if exc.code != ErrorCode.UNAVAILABLE:
            raise
        # Built-ins and plugins are known here; custom scripts only to the schedulers.
        log.warning("script.custom_unlisted", reason=exc.message)
        views = []
    custom = [CustomScriptSpec(**view.model_dump(), config_schema=CUSTOM_SCHEMA) for view in views]
    return Envelope(data=[*all_specs(gw.scripts.entries), *custom])
