"""OpenAPI: the error envelope documented per status, with an example each, the
framework's 422 (never sent: validation answers 400) taken out of the schema, and the
security requirement that matches how this gateway is running.

Which requests need a key depends on the gateway, not on the route: a keyless gateway
(loopback, no key configured, or FLEET_API_REQUIRE_KEYS=false) needs none, so every
operation's `security` also lists `{}` (anonymous) there; with keys, a key is required
everywhere but on the probes and the docs. The served document is therefore made per
request from two cached variants, and says what this very server does.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from fleet_api.auth import open_access


class ErrorEnvelope(BaseModel):
    """Every error: a 5-digit code whose first three digits are the HTTP status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"code": 40001, "message": "serials: must hold at least one serial", "data": None}
            ]
        }
    )

    code: int = Field(..., description="5-digit error code (0 is success, never here)")
    message: str = Field(..., description="what was wrong, naming the field")
    data: Any = None


_EXAMPLES: dict[int, tuple[str, int, str]] = {
    400: (
        "invalid parameters (names the field)",
        40001,
        "min_interval: 30 is greater than max_interval 10",
    ),
    401: ("missing, unknown or revoked API key", 40101, "unknown API key"),
    403: (
        "the key's plan has no API access",
        40301,
        "plan starter has no API access; upgrade to pro, team or business",
    ),
    404: ("unknown id or path", 40401, "task 42 not found"),
    409: (
        "wrong state for the action",
        40901,
        "task 7 is completed; only failed tasks can be retried",
    ),
    413: (
        "the body is larger than FLEET_API_MAX_BODY_BYTES (1 MiB by default)",
        41301,
        "body: larger than the gateway's limit of 1048576 bytes (FLEET_API_MAX_BODY_BYTES)",
    ),
    429: (
        "the caller has FLEET_API_SSE_MAX_STREAMS_PER_CALLER live streams open",
        42901,
        "'ops' already has 20 live event streams open, the limit",
    ),
    500: (
        "internal error (quote the correlation id)",
        50001,
        "internal error; quote correlation id 3f2a... to the operator",
    ),
    503: (
        "the bus or the scheduler is unavailable",
        50301,
        "no scheduler answered query.task.list within 5s",
    ),
}

COMMON = (400, 401, 403, 500, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the envelope for each status (plus the common ones)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*COMMON, *statuses}):
        description, code, message = _EXAMPLES[status]
        out[status] = {
            "model": ErrorEnvelope,
            "description": description,
            "content": {
                "application/json": {"example": {"code": code, "message": message, "data": None}}
            },
        }
    return out


def install(app: FastAPI) -> None:
    variants: dict[bool, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        keyless = _keyless(app)
        if keyless not in variants:
            variants[keyless] = _anonymous_allowed(_base()) if keyless else _base()
        app.openapi_schema = variants[keyless]
        return app.openapi_schema

    def _base() -> dict[str, Any]:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _keyless(app: FastAPI) -> bool:
    settings = app.state.settings
    gw = getattr(app.state, "gateway", None)
    return open_access(settings, gw.keys.entries if gw is not None else {})


def _anonymous_allowed(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every secured operation open to anonymous callers too."""
    out = copy.deepcopy(schema)
    for path in out.get("paths", {}).values():
        for operation in path.values():
            security = operation.get("security")
            if security and {} not in security:
                operation["security"] = [*security, {}]
    return out
