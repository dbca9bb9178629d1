"""Every failure as the envelope `{code, message, data}` with the fitting HTTP status.

FastAPI's own answers (422 validation bodies, `{"detail": ...}` for 404/405) are
replaced here, so a client only ever parses one shape.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Send

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import Reply
from fleet_contracts.envelope import error
from fleet_contracts.validation import describe_errors

log = structlog.get_logger(__name__)

_SOURCES = ("body", "query", "path", "header", "cookie")
_NOT_AN_OBJECT = ("model_attributes_type", "dict_type", "model_type")


class ApiError(Exception):
    """An answer other than success; raised anywhere, rendered by the handler below."""

    def __init__(self, code: ErrorCode | int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data

    @property
    def status(self) -> int:
        return status_for(self.code)

    @classmethod
    def from_reply(cls, reply: Reply) -> ApiError:
        return cls(reply.code, reply.message, reply.data)


def status_for(code: int) -> int:
    try:
        return ErrorCode(code).http_status
    except ValueError:
        status = code // 100
        return status if 400 <= status <= 599 else 500


def envelope_response(
    code: ErrorCode | int, message: str, data: Any = None, status: int | None = None
) -> JSONResponse:
    body = error(ErrorCode.OK, message, data)
    body["code"] = int(code)
    return JSONResponse(body, status_code=status or status_for(int(code)))


async def send_envelope(
    send: Send, code: ErrorCode, message: str, *extra: tuple[bytes, bytes]
) -> None:
    """An error envelope sent straight from an ASGI middleware, before any routing."""
    body = json.dumps({"code": int(code), "message": message, "data": None}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": code.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def too_large_message(limit: int) -> str:
    return (
        f"body: larger than the gateway's limit of {limit} bytes "
        "(FLEET_API_MAX_BODY_BYTES); send fewer items per request"
    )


def unavailable(message: str) -> ApiError:
    return ApiError(ErrorCode.UNAVAILABLE, message)


def _strip_source(err: ErrorDetails) -> ErrorDetails:
    loc = tuple(err["loc"])
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    stripped: ErrorDetails = {**err, "loc": loc}
    return stripped


def validation_error(errors: list[ErrorDetails]) -> ApiError:
    """One 400 naming every field at fault; a missing script_name has its own code."""
    for err in errors:
        if err["type"] == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "not valid JSON")
            where = err["loc"][-1] if len(err["loc"]) > 1 else "?"
            return ApiError(
                ErrorCode.INVALID_PARAMETERS,
                f"body: malformed JSON ({reason} at character {where})",
            )
    cleaned = [_strip_source(e) for e in errors]
    for err in cleaned:
        if tuple(err["loc"]) == ("script_name",) and err["type"] in (
            "missing",
            "string_too_short",
        ):
            return ApiError(
                ErrorCode.MISSING_SCRIPT_NAME, "script_name: required (the script to run)"
            )
    for err in cleaned:
        if tuple(err["loc"]) == () and err["type"] in ("missing", *_NOT_AN_OBJECT):
            return ApiError(
                ErrorCode.INVALID_PARAMETERS,
                "body: must be a JSON object, sent with Content-Type: application/json",
            )
    return ApiError(ErrorCode.INVALID_PARAMETERS, describe_errors(cleaned))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        log.warning("request.unavailable", code=exc.code, reason=exc.message)
    return envelope_response(exc.code, exc.message, exc.data, exc.status)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    api = validation_error(list(exc.errors()))
    return envelope_response(api.code, api.message, api.data, api.status)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    method, path = request.method, request.url.path
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no such endpoint: {method} {path} (see /docs)"
    elif exc.status_code == 405:
        headers.pop("allow", None)
        allowed = allowed_methods(request)
        headers["Allow"] = allowed
        message = f"method {method} is not allowed on {path}" + (
            f" (allowed: {allowed})" if allowed else ""
        )
    elif exc.status_code == 413:
        # FastAPI's limiter stopped reading a body sent without a length.
        message = too_large_message(request.app.state.settings.api_max_body_bytes)
        headers["Connection"] = "close"
    else:
        message = str(exc.detail)
    response = envelope_response(exc.status_code * 100 + 1, message, None, exc.status_code)
    response.headers.update(headers)
    return response


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves on this path; Starlette's own `Allow` names only
    the first route that matched the path (`POST` on `/task`, never `GET` too)."""
    methods = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return ", ".join(methods)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
