"""Webhooks: where to POST which events, signed with the Standard Webhooks scheme.

Each delivery carries `webhook-id` (the same on every retry of one delivery),
`webhook-timestamp` and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
`id.timestamp.body` under the secret), as the Standard Webhooks spec describes.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

SECRET_PREFIX = "whsec_"
BATCH_FINISHED = "batch.finished"
WEBHOOK_EVENT_TYPES = (
    "task.created",
    "task.dispatched",
    "task.started",
    "task.completed",
    "task.failed",
    "task.stopped",
    "task.retried",
    "task.deleted",
    BATCH_FINISHED,
    "schedule.fired",
    "device.connected",
    "device.disconnected",
)


def check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http or https URL")
    if not parts.hostname:
        raise ValueError(f"{value!r} names no host")
    return value


def check_secret(value: str) -> str:
    """`whsec_` + base64 of 24 to 64 random bytes, as Standard Webhooks secrets are."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (a Standard Webhooks secret)")
    try:
        raw = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"is not base64 after {SECRET_PREFIX!r}") from exc
    if not 24 <= len(raw) <= 64:
        raise ValueError(f"must hold 24 to 64 bytes, not {len(raw)}")
    return value


class WebhookRequest(BaseModel):
    """POST /webhook. Without a secret one is made and shown once, in the answer."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., min_length=1, max_length=2000)
    event_types: list[str] = Field(..., min_length=1, max_length=len(WEBHOOK_EVENT_TYPES))
    secret: str | None = Field(None, max_length=200)
    description: str = Field("", max_length=200)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("event_types")
    @classmethod
    def _types(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in WEBHOOK_EVENT_TYPES:
                raise ValueError(
                    f"{value!r} is not an event type a hook can ask for"
                    f" ({', '.join(WEBHOOK_EVENT_TYPES)})"
                )
        return list(dict.fromkeys(values))

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return None if value is None else check_secret(value)


class DeliveryView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    delivery_id: str
    event_type: str
    attempt: int
    status_code: int | None = None
    error: str | None = None
    delivered: bool = False
    at: datetime


class WebhookView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: int
    url: str
    event_types: list[str]
    description: str = ""
    created_at: datetime | None = None
    secret: str | None = Field(None, description="shown only in the answer to the create")
    deliveries: list[DeliveryView] = Field(
        default_factory=list, description="the most recent delivery attempts, newest first"
    )


def payload(event_type: str, timestamp: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The body of a delivery, in the shape Standard Webhooks recommends."""
    return {"type": event_type, "timestamp": timestamp.isoformat(), "data": data}
