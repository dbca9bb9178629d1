"""Every failure as the envelope `{code, message, data}` with the fitting HTTP status.

FastAPI's own answers (422 validation bodies, `{"detail": ...}` for 404/405) are
replaced here, so a client only ever parses one shape.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException

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
        allowed = headers.get("allow") or headers.get("Allow") or ""
        message = f"method {method} is not allowed on {path}" + (
            f" (allowed: {allowed})" if allowed else ""
        )
    else:
        message = str(exc.detail)
    response = envelope_response(exc.status_code * 100 + 1, message, None, exc.status_code)
    response.headers.update(headers)
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
