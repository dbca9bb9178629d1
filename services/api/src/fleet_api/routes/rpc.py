"""TikMatrix's custom-script API under `/api/v1/rpc`: devices, leases, and calls on a
leased phone (UIAutomator2 JSON-RPC, UI tree, screenshot, adb), plus the per-host adb
switch. Shapes follow TikMatrix's published Python client (`tikmatrix.py`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from fleet_api.auth import Caller, admin_caller
from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.routes.params import NO_NUL, ApiCaller, CorrelationId
from fleet_api.scheduler import ask, run_command
from fleet_api.sessions import HeaderHolder, PathHolder, call_device, check
from fleet_api.state import gateway
from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import LeaseDevice, ReleaseLease, RenewLease, SetHostAdb
from fleet_contracts.envelope import Envelope
from fleet_contracts.queries import ListAdbHosts, ListLeases, ListRpcDevices
from fleet_contracts.sessions import (
    AdbRequest,
    AdbSetting,
    DeviceCall,
    DeviceCallKind,
    HeartbeatRequest,
    JsonRpcRequest,
    LeaseRequest,
    LeaseView,
    RpcDeviceView,
    lease_id_of,
    new_session_id,
)

router = APIRouter(prefix="/rpc", tags=["custom scripts"])
Serial = Annotated[str, Query(min_length=1, max_length=200, pattern=NO_NUL)]
AdminCaller = Annotated[Caller, Depends(admin_caller)]


@router.get(
    "/devices",
    summary="Online devices, each with whether it is busy (a task or a lease)",
    response_model=Envelope[list[RpcDeviceView]],
    responses=errors(),
)
async def devices(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[RpcDeviceView]]:
    data = await ask(gateway(request), ListRpcDevices(correlation_id=cid))
    return Envelope(data=[RpcDeviceView.model_validate(d) for d in data or []])


@router.post(
    "/session",
    summary="Lease a device: {serial, label, ttl_secs} -> session_id (keep it secret)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(409),
)
async def lease(
    request: Request,
    body: Annotated[LeaseRequest, Body()],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    session_id = new_session_id()
    command = LeaseDevice(
        lease_id=lease_id_of(session_id),
        serial=body.serial,
        label=body.label,
        ttl_secs=body.ttl_secs,
        device_limit=caller.license.device_limit,
        actor=caller.actor,
        correlation_id=cid,
    )
    data = await run_command(gateway(request), command)
    return Envelope(data={"session_id": session_id, **data})


@router.get(
    "/session",
    summary="Live leases (their lease ids, never their session ids)",
    response_model=Envelope[list[LeaseView]],
    responses=errors(),
)
async def leases(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[LeaseView]]:
    data = await ask(gateway(request), ListLeases(correlation_id=cid))
    return Envelope(data=[LeaseView.model_validate(d) for d in data or []])


@router.post(
    "/session/{session_id}/heartbeat",
    summary="Extend a lease by its ttl_secs from now",
    response_model=Envelope[dict[str, Any]],
    responses=errors(409),
)
async def heartbeat(
    request: Request,
    holder: PathHolder,
    cid: CorrelationId,
    body: Annotated[HeartbeatRequest | None, Body()] = None,
) -> Envelope[dict[str, Any]]:
    command = RenewLease(
        lease_id=holder.lease_id,
        ttl_secs=body.ttl_secs if body else None,
        actor=holder.actor,
        correlation_id=cid,
    )
    return Envelope(data=await run_command(gateway(request), command))


@router.delete(
    "/session/{session_id}",
    summary="Release a lease: the device is free at once",
    response_model=Envelope[dict[str, Any]],
    responses=errors(409),
)
async def release(
    request: Request, holder: PathHolder, cid: CorrelationId
) -> Envelope[dict[str, Any]]:
    command = ReleaseLease(lease_id=holder.lease_id, actor=holder.actor, correlation_id=cid)
    return Envelope(data=await run_command(gateway(request), command))


@router.post(
    "/jsonrpc",
    summary="One UIAutomator2 JSON-RPC call on the leased device; data is its result",
    response_model=Envelope[Any],
    responses=errors(409),
)
async def jsonrpc(
    request: Request,
    body: Annotated[JsonRpcRequest, Body()],
    holder: HeaderHolder,
    cid: CorrelationId,
) -> Envelope[Any]:
    gw = gateway(request)
    lease = await check(gw, holder, body.serial, cid)
    call = DeviceCall(
        serial=body.serial,
        kind="jsonrpc",
        method=body.method,
        params=body.params,
        timeout=body.timeout,
        lease_id=lease.lease_id,
        correlation_id=cid,
    )
    answer = await call_device(gw, lease.agent_id, call)
    return Envelope(data=json.loads(await answer.whole() or b"null"))


@router.post(
    "/adb",
    summary="An adb shell command on the leased device (off unless an admin enables it)",
    response_model=Envelope[str],
    responses=errors(409),
)
async def adb(
    request: Request,
    body: Annotated[AdbRequest, Body()],
    holder: HeaderHolder,
    cid: CorrelationId,
) -> Envelope[str]:
    gw = gateway(request)
    lease = await check(gw, holder, body.serial, cid)
    if not lease.adb_enabled:
        raise ApiError(
            ErrorCode.ADB_DISABLED,
            f"adb passthrough is off on the host of {body.serial}; an admin turns it on with "
            'PUT /api/v1/rpc/adb/hosts/{agent_id} {"enabled": true}',
        )
    call = DeviceCall(
        serial=body.serial,
        kind="adb",
        args=body.args,
        timeout=body.timeout_ms / 1000,
        lease_id=lease.lease_id,
        correlation_id=cid,
    )
    answer = await call_device(gw, lease.agent_id, call)
    return Envelope(data=str(json.loads(await answer.whole() or b'""')))


async def _stream(
    request: Request, holder: HeaderHolder, serial: str, cid: str, kind: DeviceCallKind
) -> Response:
    gw = gateway(request)
    lease = await check(gw, holder, serial, cid)
    call = DeviceCall(
        serial=serial,
        kind=kind,
        timeout=30.0,
        lease_id=lease.lease_id,
        correlation_id=cid,
    )
    answer = await call_device(gw, lease.agent_id, call)
    return StreamingResponse(
        answer.pieces,
        media_type=answer.meta.content_type,
        headers={"Content-Length": str(answer.meta.size)},
    )


@router.get(
    "/hierarchy",
    summary="The leased device's UI tree as XML (streamed)",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}, **errors(409)},
)
async def hierarchy(
    request: Request, serial: Serial, holder: HeaderHolder, cid: CorrelationId
) -> Response:
    return await _stream(request, holder, serial, cid, "hierarchy")


@router.get(
    "/screenshot",
    summary="The leased device's screen as PNG (streamed, any size)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(409)},
)
async def screenshot(
    request: Request, serial: Serial, holder: HeaderHolder, cid: CorrelationId
) -> Response:
    return await _stream(request, holder, serial, cid, "screenshot")


@router.get(
    "/adb/hosts",
    summary="Hosts (agents) and whether adb passthrough is on for their phones",
    response_model=Envelope[list[dict[str, Any]]],
    responses=errors(),
)
async def adb_hosts(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[dict[str, Any]]]:
    return Envelope(data=await ask(gateway(request), ListAdbHosts(correlation_id=cid)))


@router.put(
    "/adb/hosts/{agent_id}",
    summary="Turn adb passthrough on or off for one host's phones (admin keys only)",
    response_model=Envelope[dict[str, Any]],
    responses=errors(),
)
async def set_adb(
    request: Request,
    agent_id: Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)],
    body: Annotated[AdbSetting, Body()],
    caller: AdminCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    command = SetHostAdb(
        agent_id=agent_id, enabled=body.enabled, actor=caller.actor, correlation_id=cid
    )
    return Envelope(data=await run_command(gateway(request), command))
