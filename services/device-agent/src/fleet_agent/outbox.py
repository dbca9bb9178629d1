"""The agent's reports coalesced: one REPORTS message per short window, in order.

Every report the agent makes goes through one `ReportOutbox`. A report made while the
agent is busy (a batch left less than `window` ago) waits at most `window` for others
(or less, once `max_reports` or `max_bytes` are queued), then all that wait go as one
`ReportBatch` on `report.<id>.batch`; while a batch is out, the next one fills, so under
load batches grow. A report made at rest goes at once, with those made in the same turn
of the event loop. A batch of one goes as the plain report, as before batches.

What a single report had, each still has:
- its own message id inside the batch, so the scheduler tracks and deduplicates reports
  one by one; the batch carries an id of its own as `Nats-Msg-Id`, kept across retries;
- order: batches leave one after another, and a batch is retried until it lands (or is
  given up) before the next leaves, so a task's started, progress and outcome arrive in
  the order they happened;
- retries as `reports.publish_report` makes them, per report: a batch is retried while
  any report in it still wants a try (an outcome: for as long as the agent runs, then
  `attempts` more once it stops), and each caller hears whether its report was stored;
- progress is advisory (`post`): never awaited by the run, never retried for itself.

A step may also be posted to linger (`post(report, linger=...)`): it joins the queue only
after that long, the run's later steps replacing it meanwhile, and the run's outcome
takes it back. A run that ends within the linger then records no step nobody could have
watched: its outcome says more. On a phone a run takes seconds to minutes and its steps
go as before, a linger late; a run ending in milliseconds (the simulator, a script
failing at once) saves an event in the log, a report and a relay publish per run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from fleet_agent.metrics import REPORTS_LOST
from fleet_contracts.agent import Report, ReportBatch
from fleet_contracts.subjects import report_subject
from fleet_runtime.bus import headers_for

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 0.01
MAX_REPORTS = 256
MAX_BYTES = 256 * 1024
"""Well under NATS's default 1 MiB payload: a batch's envelope adds little to its reports."""
BATCH_SUBJECT_KIND = "batch"
MAX_QUEUED_PROGRESS = 10_000
"""Past this many queued reports (a bus outage) progress is dropped, not queued: it is
advisory, and a long outage must not fill the agent's memory with it."""


@dataclass
class _Entry:
    report: Report
    size: int
    attempts: int
    until: asyncio.Event | None
    done: asyncio.Future[bool] | None
    """None for progress: nobody waits for it."""
    tried: int = 0

    def wants_more(self) -> bool:
        return self.done is not None and self.tried < self.attempts

    def count_try(self) -> None:
        # Like publish_report: tries count only once `until` (the agent stopping) is set.
        if self.until is None or self.until.is_set():
            self.tried += 1


@dataclass
class Batch:
    """What one flush sends: the subject, payload and headers of one REPORTS message."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    reports: list[Report] = field(default_factory=list)


def _kind(report: Report) -> str:
    return str(type(report).model_fields["type"].default)


def cut(sizes: list[int], max_reports: int, max_bytes: int) -> int:
    """How many of the queued reports (sizes in bytes, in order) the next batch takes:
    as many as fit both bounds, and always the first (one too big goes alone)."""
    taken, filled = 0, 0
    for size in sizes:
        if taken and (taken >= max_reports or filled + size > max_bytes):
            break
        taken += 1
        filled += size
    return taken


def message_for(agent_id: str, reports: list[Report]) -> Batch:
    """One REPORTS message for `reports`: the report itself when alone, else a batch."""
    if len(reports) == 1:
        (only,) = reports
        subject = report_subject(only.agent_id, _kind(only))
        return Batch(subject, only.to_bytes(), headers_for(only), reports)
    batch = ReportBatch(agent_id=agent_id, reports=list(reports))
    return Batch(
        report_subject(agent_id, BATCH_SUBJECT_KIND), batch.to_bytes(), headers_for(batch), reports
    )


def _run_of(report: Report) -> tuple[int, str] | None:
    """The (task, dispatch) a report is about, if it is about a run."""
    task_id, dispatch_id = getattr(report, "task_id", None), getattr(report, "dispatch_id", None)
    if isinstance(task_id, int) and isinstance(dispatch_id, str):
        return task_id, dispatch_id
    return None


class ReportOutbox:
    def __init__(
        self,
        js: JetStreamContext,
        agent_id: str,
        *,
        window: float = WINDOW_SECONDS,
        max_reports: int = MAX_REPORTS,
        max_bytes: int = MAX_BYTES,
        ack_wait: float = 2.0,
    ) -> None:
        self._js = js
        self._agent_id = agent_id
        self._window = window
        self._max_reports = max_reports
        self._max_bytes = max_bytes
        self._ack_wait = ack_wait
        self._queue: deque[_Entry] = deque()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._gave_up_stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_flush = float("-inf")
        self._lingering: dict[tuple[int, str], _Entry] = {}

    async def send(
        self, report: Report, *, attempts: int = 15, until: asyncio.Event | None = None
    ) -> bool:
        """Store `report` on REPORTS with the next batch; False (and an error logged) if
        every attempt failed. `attempts` and `until` as in `reports.publish_report`."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        run = _run_of(report)
        if run is not None and self._lingering.pop(run, None) is not None:
            log.debug("report.progress_superseded", task_id=run[0], type=_kind(report))
        self._put(_Entry(report, len(report.to_bytes()), attempts, until, done))
        return await asyncio.shield(done)

    async def send_all(self, reports: list[Report]) -> None:
        """Queue many at once (the start-up inventory) and wait until all went out."""
        await asyncio.gather(*(self.send(report) for report in reports))

    def post(self, report: Report, *, linger: float = 0.0) -> None:
        """Queue an advisory report (progress): sent once with the next batch, not
        waited for; lost only with a batch that carries no report anybody waits for, or
        when `MAX_QUEUED_PROGRESS` reports already wait (a bus outage).

        With `linger`, it waits that long before joining the queue; a later post for the
        same run replaces it meanwhile, and the run's next `send` (its outcome) drops it."""
        if len(self._queue) + len(self._lingering) >= MAX_QUEUED_PROGRESS:
            log.debug("report.progress_dropped", message_id=report.message_id, queued=True)
            return
        entry = _Entry(report, len(report.to_bytes()), 1, None, None)
        run = _run_of(report)
        if linger <= 0 or run is None:
            self._put(entry)
            return
        if run not in self._lingering:
            asyncio.get_running_loop().call_later(linger, self._release, run)
        self._lingering[run] = entry

    def _release(self, run: tuple[int, str]) -> None:
        entry = self._lingering.pop(run, None)
        if entry is not None:
            self._put(entry)

    def _put(self, entry: _Entry) -> None:
        self._queue.append(entry)
        self._idle.clear()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="report-outbox")
        self._wake.set()

    async def close(self, grace: float = 2.0) -> None:
        """Let what is queued go out for up to `grace` seconds, then stop flushing; what
        is left is given up (callers have waited for what mattered: the runs' outcomes).
        Steps still lingering are dropped: nobody waits for them."""
        self._lingering.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        while self._queue:
            self._resolve([self._queue.popleft()], False)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            loop = asyncio.get_running_loop()
            if self._window > 0 and loop.time() - self._last_flush < self._window:
                # Busy: the window opens with the first report, others made meanwhile
                # join it.
                await asyncio.sleep(self._window)
            else:
                # Idle for a window or more: this report goes at once (a phone starting
                # a run at rest should not wait for company), with those made in the
                # same turn of the loop.
                await asyncio.sleep(0)
            while self._queue:
                # Reports made while a batch is out wait for the next: no window needed.
                taken = cut([e.size for e in self._queue], self._max_reports, self._max_bytes)
                entries = [self._queue.popleft() for _ in range(taken)]
                try:
                    stored = await self._deliver(entries)
                except asyncio.CancelledError:
                    self._resolve(entries, False)
                    raise
                except Exception as exc:  # one bad batch must not stop every later report
                    log.exception("report.batch_crashed", error=str(exc))
                    stored = False
                self._resolve(entries, stored)
            self._last_flush = loop.time()
            self._wake.clear()
            self._idle.set()

    async def _deliver(self, entries: list[_Entry]) -> bool:
        message = message_for(self._agent_id, [e.report for e in entries])
        kind = _kind(entries[0].report) if len(entries) == 1 else BATCH_SUBJECT_KIND
        delay = 0.1
        while True:
            try:
                await self._js.publish(
                    message.subject,
                    message.payload,
                    headers=message.headers,
                    timeout=self._ack_wait,
                )
                self._gave_up_stopping = False
                return True
            except (NatsError, TimeoutError) as exc:
                for entry in entries:
                    entry.count_try()
                stopping = any(e.until is not None and e.until.is_set() for e in entries)
                if not any(e.wants_more() for e in entries) or (
                    stopping and self._gave_up_stopping
                ):
                    # A stopping agent gave up one batch on this bus already: one try
                    # each for the rest, so stopping stays bounded however many wait.
                    self._gave_up_stopping = self._gave_up_stopping or stopping
                    return False
                log.warning(
                    "report.retry",
                    type=kind,
                    reports=len(entries),
                    attempt=max(e.tried for e in entries),
                    error=str(exc) or repr(exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _resolve(self, entries: list[_Entry], stored: bool) -> None:
        for entry in entries:
            if not stored:
                if entry.done is None:
                    log.warning("report.progress_dropped", message_id=entry.report.message_id)
                else:
                    log.error(
                        "report.lost", type=_kind(entry.report), message_id=entry.report.message_id
                    )
                    REPORTS_LOST.inc()
            if entry.done is not None and not entry.done.done():
                entry.done.set_result(stored)
