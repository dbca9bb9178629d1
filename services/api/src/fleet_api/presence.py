"""Which schedulers this gateway has heard announce themselves (fleet_contracts.presence).

A command is sent only when a scheduler is known to run: one heard within the window,
or - when none was - one that answers a single ping. A ping nobody answers makes the
gateway sure none runs until the next announcement, so while schedulers are away each
command is refused at once without another query; a scheduler that starts announces
itself at once, and the next command goes through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from fleet_contracts.presence import PRESENCE_WINDOW_SECONDS, SchedulerPresence
from fleet_contracts.subjects import SCHEDULER_PRESENCE

log = structlog.get_logger(__name__)

Verdict = Literal["present", "absent", "unknown"]


class Presence:
    """Last time each scheduler was heard; `verdict()` says what that means now."""

    def __init__(
        self,
        window: float = PRESENCE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.clock = clock
        self.heard: dict[str, float] = {}
        # A ping found nobody, and nobody announced since: refuse without asking again.
        self.absent_confirmed = False
        self._sub: Subscription | None = None

    def heard_from(self, presence: SchedulerPresence) -> None:
        if presence.leaving:
            self.heard.pop(presence.scheduler_id, None)
            return
        self.heard[presence.scheduler_id] = self.clock()
        self.absent_confirmed = False

    def confirm_absent(self) -> None:
        self.absent_confirmed = not self.present()

    def present(self) -> bool:
        oldest = self.clock() - self.window
        for scheduler_id, at in list(self.heard.items()):
            if at < oldest:
                del self.heard[scheduler_id]
        return bool(self.heard)

    def verdict(self) -> Verdict:
        if self.present():
            return "present"
        return "absent" if self.absent_confirmed else "unknown"

    async def start(self, nc: Client) -> None:
        async def on_message(msg: Msg) -> None:
            try:
                self.heard_from(SchedulerPresence.model_validate_json(msg.data))
            except ValidationError as exc:
                log.warning("presence.unreadable", error=str(exc))

        self._sub = await nc.subscribe(SCHEDULER_PRESENCE, cb=on_message)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("presence.unsubscribe_failed", error=str(exc))
            self._sub = None
