"""The base every bus message derives from: ids, timestamps, schema version.

Messages tolerate fields they do not know (`extra="ignore"`), so a newer producer can
add fields without breaking an older consumer.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

_IDS = random.Random(os.urandom(32))
# A forked child must not repeat its parent's ids: it draws from a fresh seed.
os.register_at_fork(after_in_child=lambda: _IDS.seed(os.urandom(32)))


def new_id() -> str:
    """32 random hex digits (128 bits), like a uuid4's hex. Drawn from a generator
    seeded once from the OS, not from the OS per id: ids are made for every message,
    report and event, and a system call apiece was a visible share of an agent's CPU.
    They need to be unique, not unguessable (nothing secret is derived from them)."""
    return f"{_IDS.getrandbits(128):032x}"


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
