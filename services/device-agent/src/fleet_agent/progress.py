"""Progress of one run, sent at most once per interval.

A script reports every step; on a real phone steps take seconds, but a fast one (or the
simulator at speed 0) reports ten in a millisecond, and each report becomes an event in
the log. So at most one goes out per interval: the latest step wins, and a step held back
is still sent once the interval has passed, unless the run has ended by then (its outcome
says more than any step).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fleet_contracts.agent import TaskProgressReport

Send = Callable[[TaskProgressReport], None]
Make = Callable[[], TaskProgressReport]
"""A step's report, made only if it is sent: most steps of a fast run never are."""


class ProgressThrottle:
    """Synchronous, with a timer rather than a task for the held step: a run creates one
    throttle and most runs end inside the interval, so the held step's timer is made and
    cancelled once per run (a task per run, awaited when cancelled, was a few per cent
    of the agent's CPU in a flood)."""

    def __init__(
        self,
        send: Send,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._last_sent: float | None = None
        self._held: Make | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._closed = False

    def report(self, progress: Make) -> None:
        if self._closed:
            return
        now = self._clock()
        if self._last_sent is None or now - self._last_sent >= self._interval:
            self._held = None
            self._last_sent = now
            self._send(progress())
            return
        self._held = progress
        if self._flush is None:
            wait = self._interval - (now - self._last_sent)
            self._flush = asyncio.get_running_loop().call_later(wait, self._send_held)

    def _send_held(self) -> None:
        self._flush = None
        held, self._held = self._held, None
        if held is not None and not self._closed:
            self._last_sent = self._clock()
            self._send(held())

    def close(self) -> None:
        """The run ended: drop what is held, before the outcome is published."""
        self._closed = True
        self._held = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
