"""Key management over REST (admin keys only), and `whoami` for any caller.

The same KV records as `python -m fleet_api keys …`, so a key made here works at once
on every gateway (each mirrors the bucket). The secret is in the create answer only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from fleet_api.auth import Caller, admin_caller, open_access
from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.keys import create_key, hash_secret, revoke_keys, stored_keys
from fleet_api.kv import open_bucket
from fleet_api.routes.params import NO_NUL, ApiCaller
from fleet_api.state import gateway
from fleet_contracts.codes import ErrorCode, Plan, Role
from fleet_contracts.envelope import Envelope
from fleet_contracts.subjects import KV_API_KEYS

router = APIRouter(tags=["keys"])
AdminCaller = Annotated[Caller, Depends(admin_caller)]


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=NO_NUL)
    plan: Plan = Plan.PRO
    role: Role = Role.OPERATOR


class KeyView(BaseModel):
    name: str
    plan: Plan
    role: Role
    created_at: datetime
    revoked: bool
    fingerprint: str = Field(..., description="the first 12 hex digits of the key's sha256")


class CreatedKey(KeyView):
    key: str = Field(..., description="the secret: shown in this answer only")


class RevokedKeys(BaseModel):
    name: str
    revoked_count: int


class Identity(BaseModel):
    actor: str = Field(..., description="the key's name, or 'local' on an open gateway")
    role: Role
    plan_name: str
    keys_required: bool = Field(..., description="false on an open (keyless loopback) gateway")


async def _bucket(request: Request) -> KeyValue:
    return await open_bucket(gateway(request).js, KV_API_KEYS)


@router.get(
    "/whoami",
    summary="The caller's key name, role and plan (what the console may show and do)",
    response_model=Envelope[Identity],
    responses=errors(),
)
async def whoami(request: Request, caller: ApiCaller) -> Envelope[Identity]:
    gw = gateway(request)
    return Envelope(
        data=Identity(
            actor=caller.actor,
            role=caller.role,
            plan_name=caller.license.plan_name,
            keys_required=not open_access(gw.settings, gw.keys.entries),
        )
    )


@router.get(
    "/keys",
    summary="Every API key (never its secret), revoked ones too; admin keys only",
    response_model=Envelope[list[KeyView]],
    responses=errors(),
)
async def list_keys(request: Request, caller: AdminCaller) -> Envelope[list[KeyView]]:
    records = await stored_keys(await _bucket(request))
    views = [
        KeyView(**record.model_dump(), fingerprint=digest[:12])
        for digest, record in sorted(records.items(), key=lambda item: item[1].created_at)
    ]
    return Envelope(data=views)


@router.post(
    "/keys",
    summary="Create an API key; the answer holds its secret, shown this once",
    response_model=Envelope[CreatedKey],
    responses=errors(409),
)
async def create(
    request: Request, body: Annotated[KeyRequest, Body()], caller: AdminCaller
) -> Envelope[CreatedKey]:
    kv = await _bucket(request)
    try:
        secret = await create_key(kv, body.name, body.plan, body.role)
    except ValueError as exc:
        raise ApiError(ErrorCode.WRONG_STATE, str(exc)) from None
    records = await stored_keys(kv)
    digest = hash_secret(secret)
    record = records[digest]
    return Envelope(data=CreatedKey(**record.model_dump(), fingerprint=digest[:12], key=secret))


@router.delete(
    "/keys/{name}",
    summary="Revoke every live key with this name",
    response_model=Envelope[RevokedKeys],
    responses=errors(404),
)
async def revoke(
    request: Request,
    name: Annotated[str, Path(min_length=1, max_length=100, pattern=NO_NUL)],
    caller: AdminCaller,
) -> Envelope[RevokedKeys]:
    count = await revoke_keys(await _bucket(request), name)
    if not count:
        raise ApiError(ErrorCode.NOT_FOUND, f"name: no live key named {name!r}")
    return Envelope(data=RevokedKeys(name=name, revoked_count=count))
