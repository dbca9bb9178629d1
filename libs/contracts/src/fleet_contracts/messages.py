"""The base every bus message derives from: ids, timestamps, schema version.

Messages tolerate fields they do not know (`extra="ignore"`), so a newer producer can
add fields without breaking an older consumer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """A command, event, report or query on the bus.

    `message_id` is the dedup key (`Nats-Msg-Id`); `correlation_id` ties every message
    back to the REST request (or agent action) that started the chain; `causation_id` is
    the id of the message that directly caused this one.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = 1
    message_id: str = Field(default_factory=new_id)
    correlation_id: str = Field(default_factory=new_id)
    causation_id: str | None = None
    occurred_at: datetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Self:
        return cls.model_validate_json(raw)

    def caused(self) -> dict[str, Any]:
        """Id fields for a message this one causes: same correlation, causation = us."""
        return {"correlation_id": self.correlation_id, "causation_id": self.message_id}
