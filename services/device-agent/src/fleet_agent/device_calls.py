"""Answering `agent.<id>.device`: one call of a leased session on one of our phones.

The gateway has checked the lease; here the phone is found, the call made under its
timeout, and the answer sent to the request's reply subject as a `DeviceCallMeta`
message followed by the body in numbered pieces, each below the bus's payload limit
(a screenshot is easily larger than NATS's 1 MiB). Failures become a meta with the
envelope code the gateway answers with.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from fleet_agent.phone import DeviceGoneError, Phone, PhoneError
from fleet_agent.remote import RemoteCallError, RemotePhone
from fleet_contracts.codes import ErrorCode
from fleet_contracts.sessions import DeviceCall, DeviceCallMeta
from fleet_contracts.subjects import HDR_CHUNK
from fleet_contracts.validation import describe
from fleet_runtime.logs import bind_correlation

log = structlog.get_logger(__name__)

HEADROOM = 4096
"""Bytes of a message left for its subject and headers."""


def chunk_size(nc: Client) -> int:
    return max(16 * 1024, nc.max_payload - HEADROOM)


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)] or []


async def send(nc: Client, reply: str, meta: DeviceCallMeta, body: bytes = b"") -> None:
    size = chunk_size(nc)
    parts = pieces(body, size)
    meta = meta.model_copy(update={"size": len(body), "chunks": len(parts)})
    await nc.publish(reply, meta.model_dump_json().encode())
    for i, part in enumerate(parts):
        await nc.publish(reply, part, headers={HDR_CHUNK: str(i)})
    await nc.flush()


async def perform(phone: RemotePhone, call: DeviceCall) -> tuple[str, bytes]:
    """(content type, body) of one call; raises PhoneError and friends."""
    limit = call.timeout
    match call.kind:
        case "jsonrpc":
            result = await asyncio.wait_for(phone.rpc(call.method, call.params, limit), limit + 10)
            return "application/json", json.dumps(result).encode()
        case "hierarchy":
            xml = await asyncio.wait_for(phone.hierarchy(limit), limit + 10)
            return "application/xml", xml.encode()
        case "screenshot":
            return "image/png", await asyncio.wait_for(phone.screenshot_png(limit), limit + 10)
        case "adb":
            out = await asyncio.wait_for(phone.adb(call.args, limit), limit + 10)
            return "application/json", json.dumps(out).encode()
    raise RemoteCallError(f"kind: {call.kind!r} is not a device call")


def failure(code: ErrorCode, message: str) -> DeviceCallMeta:
    return DeviceCallMeta(code=int(code), message=message)


async def answer(nc: Client, msg: Msg, phone_of: Callable[[str], Phone | None]) -> None:
    if not msg.reply:
        return
    try:
        call = DeviceCall.from_bytes(msg.data)
    except ValidationError as exc:
        await send(nc, msg.reply, failure(ErrorCode.INVALID_PARAMETERS, describe(exc)))
        return
    with bind_correlation(call.correlation_id, serial=call.serial, call=call.kind):
        phone = phone_of(call.serial)
        if phone is None or not isinstance(phone, RemotePhone):
            await send(
                nc,
                msg.reply,
                failure(ErrorCode.WRONG_STATE, f"serial: device {call.serial} is not attached"),
            )
            return
        try:
            content_type, body = await perform(phone, call)
        except RemoteCallError as exc:
            meta = failure(ErrorCode.INVALID_PARAMETERS, str(exc))
        except DeviceGoneError as exc:
            meta = failure(ErrorCode.WRONG_STATE, f"serial: {exc}")
        except (PhoneError, TimeoutError) as exc:
            meta = failure(
                ErrorCode.UNAVAILABLE,
                str(exc) or f"device {call.serial} did not answer within {call.timeout:g}s",
            )
        except Exception as exc:
            log.exception("device_call.crashed")
            meta = failure(ErrorCode.INTERNAL, f"{call.kind} failed on the agent: {exc}")
        else:
            log.info("device_call.answered", size=len(body), method=call.method or None)
            await send(nc, msg.reply, DeviceCallMeta(content_type=content_type), body)
            return
        log.info("device_call.failed", code=meta.code, reason=meta.message)
        await send(nc, msg.reply, meta)
