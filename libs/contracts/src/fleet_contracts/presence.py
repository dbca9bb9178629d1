"""Scheduler presence: how a gateway knows a scheduler runs without asking per command.

Every scheduler publishes `SchedulerPresence` on `SCHEDULER_PRESENCE` (core NATS, not
stored) when it starts, every `PRESENCE_PERIOD_SECONDS` after that, and once more with
`leaving` set when it stops cleanly. A gateway that heard no scheduler within
`PRESENCE_WINDOW_SECONDS` answers a command with 503 at once instead of queueing it for
nobody; a few missed announcements (a busy event loop, a NATS hiccup) fit in the window.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PRESENCE_PERIOD_SECONDS = 1.0
PRESENCE_WINDOW_SECONDS = 3.0


class SchedulerPresence(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    scheduler_id: str
    leaving: bool = False

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
