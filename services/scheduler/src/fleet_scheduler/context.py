"""What the scheduler's loops share: connections, settings, the clock, wake-ups."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from fleet_contracts.agent import DeviceStatus
from fleet_scheduler.settings import SchedulerSettings
from fleet_scheduler.task_stats import StatsSnapshot


@dataclass
class AgentSeen:
    last_seen: datetime
    """This scheduler's clock, for logs only: leases are read on the database's."""
    host: str
    devices: list[DeviceStatus]
    incarnation: str = ""
    interval_seconds: float = 5.0


@dataclass
class Context:
    settings: SchedulerSettings
    pool: asyncpg.Pool
    nc: Client
    js: JetStreamContext
    clock: Callable[[], datetime]
    rng: random.Random
    started_at: datetime
    started_monotonic: float = field(default_factory=time.monotonic)
    dispatch_wake: asyncio.Event = field(default_factory=asyncio.Event)
    relay_wake: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeats: dict[str, AgentSeen] = field(default_factory=dict)
    """Agents heard since the last flush to the agents table."""
    background: set[asyncio.Task[None]] = field(default_factory=set)
    task_stats: StatsSnapshot = field(default_factory=StatsSnapshot)
    """Stats served from memory; every commit marks them stale."""
    owned: frozenset[int] = frozenset()
    """The serial partitions this scheduler leased at its last turn (`partition_owners`).
    A hint for what to claim: a claim locks only those the database still says it holds."""
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when partitions changed hands to this scheduler: their unconfirmed runs are
    sent again at once (their old holder may have died before sending them)."""
    cooling: dict[str, datetime] = field(default_factory=dict)
    """Phones resting after their agent refused a run, until when: no claim picks them."""
    sending: set[str] = field(default_factory=set)
    """Dispatch ids being sent now: not sent again meanwhile."""
    accepted: dict[str, float] = field(default_factory=dict)
    """Dispatch ids their agent accepted (monotonic time): the agent reports their start
    itself, so this process does not send them again."""
    partition_count: int = 0
    """The log's partition count, fixed at install and read at start (0: not known)."""
    commands_in_hand: int = 0
    """Fetched COMMANDS batches being applied now (`commands.run`; a create takes every
    partition's lock): meanwhile report transactions stay short (`reports.run`)."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` beside the loops, keeping a reference so it is not collected."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def appended(self) -> None:
        """Called after a commit that appended events: wake whoever follows the log."""
        self.dispatch_wake.set()
        self.relay_wake.set()
        self.task_stats.stale()
