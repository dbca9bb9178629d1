"""Fixtures for the scheduler's tests: settings on the per-test NATS and database, a
fake clock, a client that speaks the bus contract, and a stand-in agent answering
`agent.<id>.run` on NATS (the agent side of the protocol, not a mock of a library)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_contracts.agent import (
    AccountsReport,
    AgentReply,
    AgentStartedReport,
    DeviceInfo,
    DeviceStatus,
    Heartbeat,
    Report,
    RunBatch,
    RunBatchReply,
    RunTask,
    StopRun,
    TaskCompletedReport,
    TaskFailedReport,
    TaskStartedReport,
)
from fleet_contracts.commands import AnyCommand, CommandResult, Reply, subject_for
from fleet_contracts.queries import QUERY_SUBJECTS, Query
from fleet_contracts.subjects import (
    HDR_REPLY_TO,
    agent_run_subject,
    agent_runs_subject,
    agent_stop_subject,
    heartbeat_subject,
    report_subject,
)
from fleet_runtime.bus import ensure_streams, headers_for
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings
from fleet_scheduler.store import init_connection


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy, up to `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached in {within}s (last: {last!r})")


def hhmm_ahead(now: datetime | None = None, hours: int = 2) -> str:
    """A start_time that holds a task created now: the current minute would make it due
    at once, so a fixed time of day fails a run that happens to fall on it."""
    return ((now or datetime.now(UTC)) + timedelta(hours=hours)).strftime("%H:%M")


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class Bus:
    """The gateway's and the agents' side of the bus, as the contract says."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def command(
        self, cmd: AnyCommand, msg_id: str | None = None, within: float = 10
    ) -> CommandResult:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        headers = headers_for(cmd, **{HDR_REPLY_TO: inbox})
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        await self.js.publish(subject_for(cmd), cmd.to_bytes(), headers=headers)
        msg = await sub.next_msg(timeout=within)
        await sub.unsubscribe()
        return CommandResult.model_validate_json(msg.data)

    async def query(self, q: Query) -> Reply:
        msg = await self.nc.request(QUERY_SUBJECTS[type(q)], q.to_bytes(), timeout=5)
        return Reply.model_validate_json(msg.data)

    async def report(self, report: Report) -> None:
        await self.js.publish(
            report_subject(report.agent_id, str(report.type)),  # type: ignore[attr-defined]
            report.to_bytes(),
            headers=headers_for(report),
        )


class FakeAgent:
    """Answers run/stop for its devices like a device agent; reports when told to."""

    def __init__(self, bus: Bus, agent_id: str, serials: list[str]) -> None:
        self.bus = bus
        self.agent_id = agent_id
        self.serials = serials
        self.runs: list[RunTask] = []
        self.batches: list[list[RunTask]] = []
        """The runs of each `RunBatch` request, one entry per request."""
        self.stops: list[StopRun] = []
        self.refuse: str | None = None
        self.refuse_serials: dict[str, str] = {}
        """Runs on these phones are refused with the reason given (the others accepted)."""
        self.batched = True
        """Whether it answers `RunBatch` requests (False: an agent from before them)."""
        self.answer = True
        self.auto_start = True
        self.auto_complete = False
        self.beating = True
        self.incarnation = ""
        self.holds_runs = True
        """Heartbeats name the runs accepted and not yet reported ended, as an agent's do."""
        self.dropped: set[str] = set()
        """Phones whose accepted runs the heartbeats leave out: runs the agent lost before
        starting them (a phone that holds a run is running it, as far as the record goes)."""
        self.holding: dict[str, RunTask] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, accounts: bool = False) -> None:
        await self.bus.nc.subscribe(agent_run_subject(self.agent_id), cb=self._on_run)
        if self.batched:
            await self.bus.nc.subscribe(agent_runs_subject(self.agent_id), cb=self._on_runs)
        await self.bus.nc.subscribe(agent_stop_subject(self.agent_id), cb=self._on_stop)
        await self.bus.report(
            AgentStartedReport(
                agent_id=self.agent_id,
                host=f"host-{self.agent_id}",
                devices=[DeviceInfo(serial=s, model="Pixel") for s in self.serials],
                incarnation=self.incarnation,
            )
        )
        if accounts:
            for n, serial in enumerate(self.serials, 1):
                await self.bus.report(
                    AccountsReport(
                        agent_id=self.agent_id,
                        serial=serial,
                        accounts=[
                            {"username": f"{serial}_a", "platform": "tiktok"},
                            {"username": f"{serial}_b", "platform": "tiktok"},
                        ],
                    )
                )
                del n
        self._tasks.append(asyncio.create_task(self._beat()))

    async def _beat(self) -> None:
        while True:
            if self.beating:
                beat = Heartbeat(
                    agent_id=self.agent_id,
                    host=f"host-{self.agent_id}",
                    devices=[self._status(s) for s in self.serials],
                    interval_seconds=0.1,
                    incarnation=self.incarnation,
                )
                await self.bus.nc.publish(heartbeat_subject(self.agent_id), beat.to_bytes())
            await asyncio.sleep(0.1)

    def _status(self, serial: str) -> DeviceStatus:
        run = self.holding.get(serial) if self.holds_runs and serial not in self.dropped else None
        if run is None:
            return DeviceStatus(serial=serial)
        return DeviceStatus(
            serial=serial, busy=True, task_id=run.task_id, dispatch_id=run.dispatch_id
        )

    def _take(self, run: RunTask) -> AgentReply:
        self.runs.append(run)
        reason = self.refuse or self.refuse_serials.get(run.serial)
        if reason:
            return AgentReply(accepted=False, reason=reason)
        self.holding[run.serial] = run
        return AgentReply(accepted=True)

    async def _begin(self, run: RunTask) -> None:
        if self.auto_start:
            await self.started(run)
            if self.auto_complete:
                await self.complete(run)

    async def _on_run(self, msg: Msg) -> None:
        run = RunTask.from_bytes(msg.data)
        if not self.answer:
            self.runs.append(run)
            return
        reply = self._take(run)
        await msg.respond(reply.model_dump_json().encode())
        if reply.accepted:
            await self._begin(run)

    async def _on_runs(self, msg: Msg) -> None:
        batch = RunBatch.from_bytes(msg.data)
        self.batches.append(list(batch.runs))
        if not self.answer:
            self.runs.extend(batch.runs)
            return
        replies = [self._take(run) for run in batch.runs]
        await msg.respond(RunBatchReply(replies=replies).model_dump_json().encode())
        for run, reply in zip(batch.runs, replies, strict=True):
            if reply.accepted:
                await self._begin(run)

    async def _on_stop(self, msg: Msg) -> None:
        stop = StopRun.from_bytes(msg.data)
        self.stops.append(stop)
        await msg.respond(AgentReply(accepted=True).model_dump_json().encode())

    async def started(self, run: RunTask) -> None:
        await self.bus.report(
            TaskStartedReport(
                agent_id=self.agent_id,
                task_id=run.task_id,
                dispatch_id=run.dispatch_id,
                serial=run.serial,
            )
        )

    def _ended(self, run: RunTask) -> None:
        if self.holding.get(run.serial) == run:
            del self.holding[run.serial]

    async def complete(self, run: RunTask) -> None:
        self._ended(run)
        await self.bus.report(
            TaskCompletedReport(
                agent_id=self.agent_id,
                task_id=run.task_id,
                dispatch_id=run.dispatch_id,
                serial=run.serial,
            )
        )

    async def fail(self, run: RunTask, reason: str, stopped: bool = False) -> None:
        self._ended(run)
        await self.bus.report(
            TaskFailedReport(
                agent_id=self.agent_id,
                task_id=run.task_id,
                dispatch_id=run.dispatch_id,
                serial=run.serial,
                reason=reason,
                stopped=stopped,
            )
        )

    def run_for(self, task_id: int) -> RunTask:
        return next(r for r in self.runs if r.task_id == task_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()


@pytest.fixture
def settings(nats_url: str, pg_dsn: str) -> SchedulerSettings:
    return SchedulerSettings(
        nats_url=nats_url,
        database_url=pg_dsn,
        scheduler_id="test-scheduler",
        scheduler_agent_lease_seconds=3600,
        scheduler_start_timeout_seconds=3600,
        scheduler_dispatch_poll_seconds=0.1,
        scheduler_seed=7,
    )


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_url)
    await ensure_streams(nc.jetstream())
    yield Bus(nc)
    await nc.close()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture
def clock() -> FakeClock:
    # Starts at the real time: the database stamps recorded_at with its own clock.
    return FakeClock()


@pytest.fixture
async def scheduler(settings: SchedulerSettings, clock: FakeClock) -> AsyncIterator[Scheduler]:
    async with Scheduler(settings, clock=clock) as s:
        yield s


@pytest.fixture
async def agent(bus: Bus, scheduler: Scheduler) -> AsyncIterator[FakeAgent]:
    """host-1 with device_serial_1..3 (accounts device_serial_N_a/_b), known to the scheduler."""
    fake = FakeAgent(bus, "a1", [f"device_serial_{n}" for n in (1, 2, 3)])
    fake.auto_start = False
    await fake.start(accounts=True)
    await wait_devices(bus, 3, accounts=6)
    yield fake
    await fake.close()


async def wait_devices(bus: Bus, count: int, accounts: int | None = None) -> None:
    from fleet_contracts.queries import ListAccounts, ListDevices

    async def ready() -> bool:
        online = (await bus.query(ListDevices(online=True))).data["total"]
        if online < count:
            return False
        if accounts is None:
            return True
        return int((await bus.query(ListAccounts())).data["total"]) >= accounts

    await eventually(ready, what=f"{count} devices online")
