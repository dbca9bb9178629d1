"""Who may use a lease, and the calls that travel to the agent holding its phone.

A call on a phone needs the lease's session id (`x-session-id`, or the path's id for
heartbeat and release) and works only for the lease's serial. The session id is a
credential in its own right: a program started by a task (or by whoever made the
lease) drives its phone with it alone, as TikMatrix's client does. A caller that also
sends an API key is held to that key's plan and role like anywhere else.

Calls go to `agent.<id>.device` as a `DeviceCall`; the agent answers on our inbox with
a `DeviceCallMeta` and then the body in numbered pieces, which are passed on to the
HTTP client as they arrive (the screenshot is never held whole in a JSON string).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import nats.errors
from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from fleet_api.auth import Caller, api_key_header, bearer, identify, open_access, require_role
from fleet_api.errors import ApiError, unavailable
from fleet_api.scheduler import ask
from fleet_api.state import Gateway, gateway
from fleet_contracts.codes import ErrorCode, Role
from fleet_contracts.permissions import device_call_inbox
from fleet_contracts.queries import CheckLease
from fleet_contracts.sessions import DeviceCall, DeviceCallMeta, LeaseCheck, lease_id_of
from fleet_contracts.subjects import HDR_CHUNK, agent_device_subject

SESSION_ACTOR = "session"
PIECE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LeaseHolder:
    """The caller of a session endpoint: the key behind it (None: the session alone)."""

    caller: Caller | None
    session_id: str

    @property
    def actor(self) -> str:
        return self.caller.actor if self.caller is not None else SESSION_ACTOR

    @property
    def lease_id(self) -> str:
        return lease_id_of(self.session_id)


def _holder(request: Request, session_id: str | None, secret: str | None) -> LeaseHolder:
    gw = gateway(request)
    if not session_id:
        raise ApiError(
            ErrorCode.LEASE_REQUIRED,
            "x-session-id: required; lease the device with POST /api/v1/rpc/session and "
            "send its session_id in the x-session-id header",
        )
    caller: Caller | None = None
    if secret or open_access(gw.settings, gw.keys.entries):
        caller = identify(secret, gw.settings, gw.keys.entries)
        if not caller.license.api_enabled:
            raise ApiError(ErrorCode.PLAN_NO_API_ACCESS, caller.license.message)
        require_role(caller, Role.OPERATOR, f"{request.method} {request.url.path}")
    return LeaseHolder(caller=caller, session_id=session_id)


def _secret(credentials: HTTPAuthorizationCredentials | None, api_key: str | None) -> str | None:
    return credentials.credentials if credentials else api_key


def header_holder(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    api_key: Annotated[str | None, Security(api_key_header)],
    x_session_id: Annotated[
        str | None,
        Header(alias="x-session-id", max_length=200, description="the lease's session_id"),
    ] = None,
) -> LeaseHolder:
    return _holder(request, x_session_id, _secret(credentials, api_key))


def path_holder(
    request: Request,
    session_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    api_key: Annotated[str | None, Security(api_key_header)],
) -> LeaseHolder:
    return _holder(request, session_id, _secret(credentials, api_key))


HeaderHolder = Annotated[LeaseHolder, Depends(header_holder)]
PathHolder = Annotated[LeaseHolder, Depends(path_holder)]


async def check(gw: Gateway, holder: LeaseHolder, serial: str, cid: str) -> LeaseCheck:
    """The live lease behind `holder` for `serial`, or the 403 / 409 saying why not."""
    data = await ask(gw, CheckLease(lease_id=holder.lease_id, serial=serial, correlation_id=cid))
    return LeaseCheck.model_validate(data)


@dataclass
class Answer:
    meta: DeviceCallMeta
    pieces: AsyncIterator[bytes]

    async def whole(self) -> bytes:
        return b"".join([piece async for piece in self.pieces])


async def call_device(gw: Gateway, agent_id: str, call: DeviceCall) -> Answer:
    """Send `call` to the agent holding the phone; its outcome, and its body to stream."""
    if not gw.nc.is_connected:
        raise unavailable("the message bus (NATS) is not reachable; try again shortly")
    # Under its own prefix: an agent behind a leaf node may answer there and nowhere
    # else among the gateway's replies (fleet_contracts.permissions).
    inbox = f"{device_call_inbox()}.{gw.nc.new_inbox().rsplit('.', 1)[-1]}"
    sub = await gw.nc.subscribe(inbox)
    within = call.timeout + 5
    try:
        await gw.nc.publish(agent_device_subject(agent_id), call.to_bytes(), reply=inbox)
        first = await sub.next_msg(timeout=within)
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        await _drop(sub)
        raise unavailable(
            f"agent {agent_id} did not answer a {call.kind} call on {call.serial} "
            f"within {within:g}s"
        ) from exc
    except BaseException:
        await _drop(sub)
        raise
    if (first.headers or {}).get("Status") == "503":
        await _drop(sub)
        raise unavailable(f"agent {agent_id} is not reachable (nothing listens to its calls)")
    meta = DeviceCallMeta.model_validate_json(first.data)
    if meta.code:
        await _drop(sub)
        raise ApiError(meta.code, meta.message)

    async def pieces() -> AsyncIterator[bytes]:
        try:
            for i in range(meta.chunks):
                msg = await sub.next_msg(timeout=PIECE_TIMEOUT_SECONDS)
                index = (msg.headers or {}).get(HDR_CHUNK)
                if index != str(i):
                    raise ApiError(
                        ErrorCode.INTERNAL, f"piece {index} of the answer came where {i} belonged"
                    )
                yield msg.data
        finally:
            await _drop(sub)

    return Answer(meta=meta, pieces=pieces())


async def _drop(sub: object) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()  # type: ignore[attr-defined]
