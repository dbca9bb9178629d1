"""Who is calling: API key -> plan, and whether that plan may use the API.

Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Access is open
(plan "local") only when keys are not required and none exist at all, or when
FLEET_API_REQUIRE_KEYS=false and the caller sends no key.

Each key also has a role. The rule lives here, once, rather than on every route: a
viewer may only read (GET / HEAD), an operator may also change tasks and devices, and
routes that manage keys or what runs on the hosts ask for `admin_caller`. Open access
is the single operator of a loopback gateway, so it acts as admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from fleet_api.errors import ApiError
from fleet_api.keys import KeyRecord, hash_secret
from fleet_api.settings import ApiSettings
from fleet_api.state import gateway
from fleet_contracts.codes import ErrorCode, Role
from fleet_contracts.rest import LicenseInfo

LOCAL = "local"

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <api key>")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


@dataclass(frozen=True)
class Caller:
    actor: str
    license: LicenseInfo
    role: Role = Role.ADMIN


def open_access(settings: ApiSettings, keys: dict[str, KeyRecord]) -> bool:
    if settings.api_require_keys == "false":
        return True
    return not settings.keys_required and not keys


def local_caller(settings: ApiSettings) -> Caller:
    return Caller(
        actor=LOCAL,
        license=LicenseInfo(
            plan_name=LOCAL,
            api_enabled=True,
            device_limit=None,
            message=(
                f"no API keys are configured: open access on {settings.api_host}; "
                "create one with `python -m fleet_api keys create`"
                if settings.api_require_keys != "false"
                else "API keys are not required (FLEET_API_REQUIRE_KEYS=false)"
            ),
        ),
    )


def identify(secret: str | None, settings: ApiSettings, keys: dict[str, KeyRecord]) -> Caller:
    """The caller behind `secret`, or 40101 saying what is wrong with it."""
    if not secret:
        if open_access(settings, keys):
            return local_caller(settings)
        raise ApiError(
            ErrorCode.UNAUTHORIZED,
            "missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )
    record = keys.get(hash_secret(secret))
    if record is None:
        if not keys and open_access(settings, keys):
            return local_caller(settings)
        raise ApiError(ErrorCode.UNAUTHORIZED, "unknown API key")
    if record.revoked:
        raise ApiError(ErrorCode.UNAUTHORIZED, f"API key {record.name!r} has been revoked")
    plan = record.plan
    message = (
        f"plan {plan.value} includes API access"
        if plan.api_enabled
        else f"plan {plan.value} has no API access; upgrade to pro, team or business"
    )
    return Caller(
        actor=record.name,
        role=record.role,
        license=LicenseInfo(
            plan_name=plan.value,
            api_enabled=plan.api_enabled,
            device_limit=plan.device_limit,
            message=message,
        ),
    )


async def any_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    api_key: Annotated[str | None, Security(api_key_header)],
) -> Caller:
    """The caller, whatever their plan (the license check answers starter keys too).

    Async, as every per-request dependency here: FastAPI runs a plain `def` dependency
    on a worker thread, a hop that cost more than the whole query on a busy machine."""
    gw = gateway(request)
    secret = credentials.credentials if credentials else api_key
    return identify(secret, gw.settings, gw.keys.entries)


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def require_role(caller: Caller, needed: Role, what: str) -> Caller:
    """`caller`, or 40302 naming the role `what` needs and the one the key has."""
    if not caller.role.allows(needed):
        raise ApiError(
            ErrorCode.ROLE_NOT_ALLOWED,
            f"{what} needs a key with role {needed.value} or above; "
            f"key {caller.actor!r} has role {caller.role.value}",
        )
    return caller


async def api_caller(request: Request, caller: Annotated[Caller, Depends(any_caller)]) -> Caller:
    """The caller, refused with 40301 when their plan has no API access, and with 40302
    when a viewer key asks for anything but a read."""
    if not caller.license.api_enabled:
        raise ApiError(ErrorCode.PLAN_NO_API_ACCESS, caller.license.message)
    if request.method in READ_METHODS:
        return caller
    return require_role(caller, Role.OPERATOR, f"{request.method} {request.url.path}")


def admin_caller(request: Request, caller: Annotated[Caller, Depends(api_caller)]) -> Caller:
    """The caller, refused with 40302 unless their key is an admin key."""
    return require_role(caller, Role.ADMIN, f"{request.method} {request.url.path}")
