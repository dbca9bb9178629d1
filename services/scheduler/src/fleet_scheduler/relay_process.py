"""The relay in a process of its own, started and watched by the scheduler's process.

Publishing the log to EVENTS (`relay.py`) is about a quarter of the scheduler's CPU in
a flood, and in the scheduler's process it ran on the event loop every transaction of
the scheduler waits on: each step of a report or create transaction that came back
from PostgreSQL waited its turn behind a page being serialized. On its own process the
relay uses the second core instead.

`python -m fleet_scheduler` runs it so (`FLEET_SCHEDULER_RELAY_PROCESS`, on by default);
a `Scheduler` embedded in another program keeps it in its loop unless asked. The
child is `python -m fleet_scheduler relay`: it reads the scheduler's settings as one
JSON line on its stdin and ends when its stdin does, so a scheduler that dies, even by
SIGKILL, takes its relay with it (its advisory lock goes with its connection, and
another scheduler's relay takes over). It writes one line per batch stored in EVENTS
to its stdout, which the scheduler counts into its own metrics; its logs go to the
same stderr as the scheduler's. A relay process that ends on its own is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from fleet_contracts.permissions import inbox_prefix
from fleet_runtime.bus import connect
from fleet_runtime.collector import settle
from fleet_scheduler import metrics, relay
from fleet_scheduler.settings import SchedulerSettings

log = structlog.get_logger(__name__)

RESTART_SECONDS = 1.0
"""Pause before starting a relay process again after it ended on its own."""
STOP_SECONDS = 3.0
"""How long a stopping relay process gets to finish its batch before it is killed."""


async def supervise(settings: SchedulerSettings, stopping: asyncio.Event) -> None:
    """Keep a relay process running until `stopping`."""
    while not stopping.is_set():
        try:
            code = await _one_run(settings, stopping)
            if not stopping.is_set():
                log.warning("relay.process_ended", returncode=code)
        except Exception as exc:
            log.warning("relay.process_failed", error=str(exc) or repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), RESTART_SECONDS)


async def _one_run(settings: SchedulerSettings, stopping: asyncio.Event) -> int:
    """Start a relay process, count its batches until it ends or `stopping`; its exit code."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleet_scheduler",
        "relay",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    counting = asyncio.create_task(_count_batches(proc.stdout))
    stop = asyncio.create_task(stopping.wait())
    try:
        proc.stdin.write(settings.model_dump_json().encode() + b"\n")
        await proc.stdin.drain()
        await asyncio.wait({counting, stop}, return_when=asyncio.FIRST_COMPLETED)
        # The relay ends at the end of its stdin, after the batch it is publishing.
        proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_SECONDS)
    finally:
        stop.cancel()
        if proc.returncode is None:
            log.warning("relay.process_killed", after_seconds=STOP_SECONDS)
            proc.kill()
            await proc.wait()
        await asyncio.gather(counting, return_exceptions=True)
    return await proc.wait()


async def _count_batches(out: asyncio.StreamReader) -> None:
    """Each line the relay writes is a batch stored: "<events> <seconds>"."""
    async for line in out:
        with contextlib.suppress(ValueError):
            count, seconds = line.split()
            metrics.relay_batch(int(count), float(seconds))


@dataclass
class RelayLinks:
    """The relay's process's own connections (`relay.Links`)."""

    settings: SchedulerSettings
    nc: Client
    js: JetStreamContext
    relay_wake: asyncio.Event = field(default_factory=asyncio.Event)


def read_settings() -> SchedulerSettings:
    """The scheduler's settings, the first line of stdin (read before the loop starts)."""
    return SchedulerSettings.model_validate_json(sys.stdin.buffer.readline())


def report_batch(count: int, seconds: float) -> None:
    sys.stdout.write(f"{count} {seconds:.6f}\n")
    sys.stdout.flush()


async def serve(settings: SchedulerSettings) -> None:
    """The relay process: publish the log until stdin ends (or SIGTERM)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    # Ctrl-C reaches the whole process group; the scheduler decides when its relay ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def until_stdin_ends() -> None:
        await stdin.read()
        stopping.set()

    watching = asyncio.create_task(until_stdin_ends())
    nc = await connect(
        settings.nats_url,
        f"scheduler-{settings.scheduler_id}-relay",
        link=settings.nats_link(inbox_prefix("scheduler")),
    )
    try:
        settle()
        await relay.run(RelayLinks(settings, nc, nc.jetstream()), stopping, report_batch)
    finally:
        watching.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), STOP_SECONDS)
