"""License check, and the probes an orchestrator polls (`/healthz`, `/readyz`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from fleet_api.auth import Caller, any_caller
from fleet_api.docs import ErrorEnvelope, errors
from fleet_api.errors import ApiError
from fleet_api.scheduler import PING_TIMEOUT_SECONDS, ask
from fleet_api.state import gateway
from fleet_contracts.codes import ErrorCode
from fleet_contracts.envelope import Envelope
from fleet_contracts.queries import Ping
from fleet_contracts.rest import LicenseInfo

router = APIRouter(prefix="/api/v1", tags=["license"])
probes = APIRouter(tags=["probes"])


@router.get(
    "/license/check",
    summary="The caller's plan and whether it has API access (starter: 40301)",
    response_model=Envelope[LicenseInfo],
    responses=errors(),
)
async def license_check(caller: Annotated[Caller, Depends(any_caller)]) -> Envelope[LicenseInfo]:
    if not caller.license.api_enabled:
        raise ApiError(
            ErrorCode.PLAN_NO_API_ACCESS,
            caller.license.message,
            caller.license.model_dump(mode="json"),
        )
    return Envelope(data=caller.license)


@probes.get("/healthz", summary="The process is up", response_model=Envelope[dict[str, Any]])
async def healthz() -> Envelope[dict[str, Any]]:
    return Envelope(data={"status": "ok"})


@probes.get(
    "/readyz",
    summary="NATS is connected and a scheduler answers",
    response_model=Envelope[dict[str, Any]],
    responses={503: {"model": ErrorEnvelope, "description": "not ready (says why)"}},
)
async def readyz(request: Request) -> Envelope[dict[str, Any]]:
    data = await ask(gateway(request), Ping(), PING_TIMEOUT_SECONDS)
    scheduler = data.get("scheduler_id") if isinstance(data, dict) else None
    return Envelope(data={"status": "ready", "nats": "connected", "scheduler_id": scheduler})
