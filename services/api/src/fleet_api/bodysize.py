"""The request body size limit (`FLEET_API_MAX_BODY_BYTES`, 1 MiB by default).

Two layers, because a body can announce its size or not:

- a declared `Content-Length` above the limit is refused here, before routing, before
  the key check and before a byte of the body is read: the 413 goes out at once and
  the connection is closed, so the rest of the body is never taken in;
- a body sent without a length (chunked) is counted as it arrives; at the limit the
  read fails with an HTTP 413 that `errors` turns into the same envelope (FastAPI passes
  an HTTPException raised while reading a body through as it is).

FastAPI's own `max_body_size` is not used: for a declared length it lets the route run
(a body-less `retry-all` would be applied) and only swaps the answer for a plain-text
413 at the end.

The limit holds for every route, present and future, since both layers sit in front of
the router - except the routes named `streamed` (the library upload), which pass their
body to the object store as it arrives under a limit of their own.

1 MiB is about ten times the largest create a user sends: 1,000 serials of
200 characters and a 4,000-character caption come to under 250 kB.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_api.errors import send_envelope, too_large_message
from fleet_contracts.codes import ErrorCode


class BodySizeMiddleware:
    """Refuse a declared `Content-Length` above `limit` without reading the body."""

    def __init__(
        self, app: ASGIApp, limit: int, streamed: frozenset[tuple[str, str]] = frozenset()
    ) -> None:
        self.app = app
        self.limit = limit
        # (method, path) of routes that stream their body elsewhere under their own limit.
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.streamed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
                # `Connection: close`: uvicorn then closes the connection after the
                # answer instead of draining the unread body for keep-alive.
                await send_envelope(
                    send,
                    ErrorCode.BODY_TOO_LARGE,
                    too_large_message(self.limit),
                    (b"connection", b"close"),
                )
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, counted if scope["type"] == "http" else receive, send)
