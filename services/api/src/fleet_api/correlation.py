"""The outermost layer of every request: its correlation id, its log line, and the
last-resort 500.

The id comes from the caller's `X-Correlation-Id` / `X-Request-Id` when it looks sane,
else a new one; it is bound in the logs, put on the command sent to the scheduler, and
echoed in the `X-Correlation-Id` response header. An exception nothing else handled
becomes a 500 envelope (code 50001) naming the id, so an operator can find the
traceback in the log without the caller ever seeing it.
"""

from __future__ import annotations

import json
import re
import time

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_contracts.codes import ErrorCode
from fleet_contracts.messages import new_id
from fleet_contracts.sessions import loggable_path
from fleet_runtime.logs import bind_correlation

log = structlog.get_logger(__name__)

HEADER = "X-Correlation-Id"
_SANE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def pick_correlation_id(headers: Headers) -> str:
    for name in (HEADER, "X-Request-Id"):
        value = headers.get(name)
        if value and _SANE.match(value):
            return value
    return new_id()


def correlation_id(scope: Scope) -> str:
    """The id of the request being handled (set by `CorrelationMiddleware`)."""
    return str(scope.get("state", {}).get("correlation_id", ""))


class CorrelationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = pick_correlation_id(Headers(scope=scope))
        scope.setdefault("state", {})["correlation_id"] = cid
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = cid
            await send(message)

        # A session id in the path is a credential: the log gets its digest instead.
        with bind_correlation(cid, method=scope["method"], path=loggable_path(scope["path"])):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("request.crashed")
                if status:
                    raise  # the response has begun; nothing sane can be sent now
                await self._internal_error(cid, send_with_id)
            log.info(
                "request",
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )

    @staticmethod
    async def _internal_error(cid: str, send: Send) -> None:
        body = json.dumps(
            {
                "code": int(ErrorCode.INTERNAL),
                "message": f"internal error; quote correlation id {cid} to the operator",
                "data": None,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
