"""Running scripts on phones: accepting run requests, stopping, and reporting outcomes.

One run per phone at a time. A phone stays busy from the accepted run request until
its script has actually ended (a stop or an unplug included); only then is the outcome
reported, so the scheduler never hands a phone a new task while the old script still
holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from fleet_agent import metrics
from fleet_agent.evidence import Evidence
from fleet_agent.outbox import ReportOutbox
from fleet_agent.phone import DeviceGoneError, Phone, PhoneError
from fleet_agent.progress import ProgressThrottle
from fleet_agent.scripts import Cancelled, CancelToken, Script, ScriptFailure, Target
from fleet_contracts.agent import (
    OUTPUT_STEP,
    AgentReply,
    DeviceStatus,
    Report,
    RunTask,
    StopRun,
    TaskCompletedReport,
    TaskFailedReport,
    TaskProgressReport,
    TaskStartedReport,
)
from fleet_contracts.validation import describe
from fleet_runtime.logs import bind_correlation

log = structlog.get_logger(__name__)

SCREENSHOT_TIMEOUT = 10.0
RAN_KEPT = 100_000
"""Runs begun (task and dispatch ids), remembered (newest kept) to answer a repeat of a run
that already ended."""
STEP_LINGER = 0.25
"""Seconds a step waits before it is reported; a run ending sooner reports only its
outcome (`outbox.ReportOutbox.post`). Under the progress throttle's 0.5 s, so a run's
steps still leave in order."""
STOPPED = "stopped"
DEVICE_DISCONNECTED = "device disconnected"
AGENT_STOPPING = "agent stopping"


@dataclass
class Run:
    request: RunTask
    script: Script | None = None
    token: CancelToken = field(default_factory=CancelToken)
    job: asyncio.Task[None] | None = None
    stop_requested: bool = False
    meter: metrics.RunMeter = field(default_factory=metrics.RunMeter)


class Runner:
    """The runs of one agent, keyed by serial."""

    def __init__(
        self,
        *,
        agent_id: str,
        outbox: ReportOutbox,
        scripts: dict[str, Script],
        phone_of: Callable[[str], Phone | None],
        platform_of: Callable[[str, str | None], str | None],
        screenshot_dir: Path,
        max_parallel: int | None = None,
        incarnation: str = "",
        run_log: Path | None = None,
        programs: Callable[[RunTask], Script | str] | None = None,
        evidence: Evidence | None = None,
    ) -> None:
        self._evidence_sink = evidence
        self._agent_id = agent_id
        self._incarnation = incarnation
        self._run_log = run_log
        self._outbox = outbox
        self._scripts = scripts
        self._phone_of = phone_of
        self._platform_of = platform_of
        self._screenshot_dir = screenshot_dir
        self._max_parallel = max_parallel
        self._programs = programs
        self._runs: dict[str, Run] = {}
        self._ran: OrderedDict[tuple[int, str], None] = OrderedDict()
        """(task, dispatch) of the runs this process has begun: a scheduler re-sends a
        run it has not heard start, and one that already ended must not run again."""
        self._stopping = asyncio.Event()

    def status(self, serial: str, battery: int | None = None) -> DeviceStatus:
        run = self._runs.get(serial)
        return DeviceStatus(
            serial=serial,
            busy=run is not None,
            task_id=run.request.task_id if run is not None else None,
            dispatch_id=run.request.dispatch_id if run is not None else None,
            battery=battery,
        )

    def running(self) -> list[RunTask]:
        return [run.request for run in self._runs.values()]

    def accept(self, request: RunTask) -> AgentReply:
        """Decide at once whether this agent takes the run; start it if so."""
        if request.incarnation and request.incarnation != self._incarnation:
            # Sent to a process of this agent that is gone: the scheduler has (or will
            # have) failed that run, so running it here would do what the record denies.
            return AgentReply(
                accepted=False,
                reason=f"run was sent to an earlier process of agent {self._agent_id}",
            )
        current = self._runs.get(request.serial)
        if current is not None:
            same = (current.request.task_id, current.request.dispatch_id)
            if same == (request.task_id, request.dispatch_id):
                log.info(
                    "run.duplicate_ignored",
                    correlation_id=request.correlation_id,
                    task_id=request.task_id,
                    serial=request.serial,
                )
                return AgentReply(accepted=True, reason="already running")
            return AgentReply(
                accepted=False, reason=f"device busy with task {current.request.task_id}"
            )
        if (request.task_id, request.dispatch_id) in self._ran:
            # Ended already (its outcome is reported or on its way): the scheduler sent
            # it again before hearing of its start.
            log.info(
                "run.duplicate_ignored",
                correlation_id=request.correlation_id,
                task_id=request.task_id,
                serial=request.serial,
                ended=True,
            )
            return AgentReply(accepted=True, reason="already ran")
        phone = self._phone_of(request.serial)
        if phone is None:
            return AgentReply(
                accepted=False,
                reason=f"device {request.serial} is not attached to agent {self._agent_id}",
            )
        script: Script | None = self._scripts.get(request.script_name)
        if request.program is not None and self._programs is not None:
            # A registered custom script: the run brings its program (or why it cannot run).
            made = self._programs(request)
            if isinstance(made, str):
                return AgentReply(accepted=False, reason=made)
            script = made
        if script is None:
            return AgentReply(
                accepted=False,
                reason=f"script {request.script_name!r} not installed on agent {self._agent_id}",
            )
        if self._max_parallel is not None and len(self._runs) >= self._max_parallel:
            return AgentReply(
                accepted=False,
                reason=(
                    f"agent {self._agent_id} is at its limit of {self._max_parallel} running "
                    f"scripts (FLEET_AGENT_MAX_PARALLEL={self._max_parallel})"
                ),
            )
        run = Run(request, script=script)
        self._runs[request.serial] = run
        self._ran[request.task_id, request.dispatch_id] = None
        if len(self._ran) > RAN_KEPT:
            self._ran.popitem(last=False)
        run.job = asyncio.create_task(self._execute(run, phone), name=f"task-{request.task_id}")
        return AgentReply(accepted=True)

    def stop(self, request: StopRun) -> AgentReply:
        """Cancel the task's script; its failed report follows when it has ended."""
        for run in self._runs.values():
            if run.request.task_id != request.task_id:
                continue
            if request.dispatch_id and request.dispatch_id != run.request.dispatch_id:
                continue
            run.stop_requested = True
            self._cancel(run, request.reason or STOPPED)
            return AgentReply(accepted=True)
        return AgentReply(accepted=True, reason=f"task {request.task_id} is not running here")

    async def end_on(self, serial: str, reason: str) -> None:
        """Cancel the run on `serial` (if any) and wait until its outcome is reported."""
        run = self._runs.get(serial)
        if run is None or run.job is None:
            return
        self._cancel(run, reason)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(run.job)

    async def end_all(self, reason: str) -> None:
        self._stopping.set()
        jobs = [run.job for run in self._runs.values() if run.job is not None]
        for run in list(self._runs.values()):
            self._cancel(run, reason)
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    def _cancel(self, run: Run, reason: str) -> None:
        run.token.cancel(reason)
        if run.job is not None and not run.job.done():
            run.job.cancel()

    async def _execute(self, run: Run, phone: Phone) -> None:
        request = run.request
        with bind_correlation(
            request.correlation_id, task_id=request.task_id, serial=request.serial
        ):
            try:
                outcome = await self._attempt(run, phone)
            except asyncio.CancelledError:
                # We cancelled our own run: the outcome still has to be published.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                outcome = self._ended_by_cancel(run)
            run.meter.ended(request.script_name, outcome)
            # The phone is free once the script has ended, before the scheduler hears.
            if self._runs.get(request.serial) is run:
                del self._runs[request.serial]
            if isinstance(outcome, TaskFailedReport):
                log.info("run.failed", reason=outcome.reason, stopped=outcome.stopped)
            else:
                log.info("run.completed")
            # While running: until it lands. Once stopping: a few tries, then go; the
            # scheduler fails these runs itself when this agent restarts or goes silent.
            self._record(request, outcome.type)  # type: ignore[attr-defined]
            if await self._outbox.send(outcome, until=self._stopping, attempts=3):
                self._record(request, "reported")

    def _record(self, request: RunTask, what: str) -> None:
        """Append to this agent's own record of what its phones ran (tests judge the
        scheduler's record against it): a line when a run begins, one with its outcome
        when the script has ended, and one when that outcome is stored on REPORTS."""
        if self._run_log is None:
            return
        line = json.dumps(
            {
                "incarnation": self._incarnation,
                "task_id": request.task_id,
                "dispatch_id": request.dispatch_id,
                "serial": request.serial,
                "event": what,
            }
        )
        with self._run_log.open("a") as out:
            out.write(line + "\n")

    def _ended_by_cancel(self, run: Run) -> TaskFailedReport:
        reason = run.token.reason or STOPPED
        return self._failed(run, reason, stopped=run.stop_requested)

    def _failed(
        self, run: Run, reason: str, *, stopped: bool = False, screenshot: Path | None = None
    ) -> TaskFailedReport:
        return TaskFailedReport(
            agent_id=self._agent_id,
            task_id=run.request.task_id,
            dispatch_id=run.request.dispatch_id,
            serial=run.request.serial,
            reason=reason,
            stopped=stopped,
            screenshot=str(screenshot) if screenshot else None,
            **run.request.caused(),
        )

    async def _attempt(self, run: Run, phone: Phone) -> Report:
        request = run.request
        ids = request.caused()
        script = run.script or self._scripts[request.script_name]
        log.info("run.accepted", script=request.script_name, dispatch_id=request.dispatch_id)
        self._record(request, "run.begun")
        await self._outbox.send(
            TaskStartedReport(
                agent_id=self._agent_id,
                task_id=request.task_id,
                dispatch_id=request.dispatch_id,
                serial=request.serial,
                **ids,
            ),
        )
        try:
            config = script.config_model.model_validate(request.script_config)
        except ValidationError as exc:
            return self._failed(run, describe(exc, "script_config"))

        def post(report: TaskProgressReport) -> None:
            # Advisory, and a run should not wait for it: it leaves with the next batch,
            # a step after lingering (its outcome may make it moot); printed output at once.
            linger = 0.0 if report.step == OUTPUT_STEP else STEP_LINGER
            self._outbox.post(report, linger=linger)

        throttle = ProgressThrottle(post)

        async def progress(step: str, percent: int | None, message: str) -> None:
            log.info("run.step", step=step, percent=percent, detail=message or None)
            run.meter.begin(request.script_name, step)
            throttle.report(
                lambda: TaskProgressReport(
                    agent_id=self._agent_id,
                    task_id=request.task_id,
                    dispatch_id=request.dispatch_id,
                    serial=request.serial,
                    step=step,
                    percent=percent,
                    message=message,
                    **ids,
                )
            )

        target = Target(
            phone=phone,
            task_id=request.task_id,
            username=request.username,
            platform=self._platform_of(request.serial, request.username),
        )
        try:
            try:
                result = await script.run(target, config, progress, run.token)
            finally:
                # No step may land after the outcome it would contradict.
                throttle.close()
        except Cancelled:
            return self._ended_by_cancel(run)
        except ScriptFailure as exc:
            shot = await self._evidence(run, phone) if exc.on_screen else None
            return self._failed(run, exc.reason, screenshot=shot)
        except DeviceGoneError as exc:
            log.warning("run.device_gone", error=str(exc))
            return self._failed(run, DEVICE_DISCONNECTED)
        except PhoneError as exc:
            shot = await self._evidence(run, phone)
            return self._failed(run, f"phone error: {exc}", screenshot=shot)
        except Exception as exc:
            log.exception("run.script_crashed", script=request.script_name)
            shot = await self._evidence(run, phone)
            reason = f"script {request.script_name!r} crashed: {type(exc).__name__}: {exc}"
            return self._failed(run, reason, screenshot=shot)
        return TaskCompletedReport(
            agent_id=self._agent_id,
            task_id=request.task_id,
            dispatch_id=request.dispatch_id,
            serial=request.serial,
            result=result,
            **ids,
        )

    async def _evidence(self, run: Run, phone: Phone) -> Path | None:
        """Screenshot and hierarchy of the failed step, uploaded; the local shot's path."""
        shot = await self._screenshot(run, phone)
        if self._evidence_sink is None:
            return shot
        try:
            hierarchy = await asyncio.wait_for(
                phone.hierarchy(SCREENSHOT_TIMEOUT), SCREENSHOT_TIMEOUT + 5
            )
        except (PhoneError, OSError, TimeoutError) as exc:
            log.warning("run.hierarchy_failed", error=str(exc))
            hierarchy = None
        await self._evidence_sink.keep(
            run.request.task_id, run.request.dispatch_id, shot, hierarchy
        )
        return shot

    async def _screenshot(self, run: Run, phone: Phone) -> Path | None:
        name = f"task-{run.request.task_id}-{run.request.dispatch_id}.png"
        try:
            self._screenshot_dir.mkdir(parents=True, exist_ok=True)
            shot = await asyncio.wait_for(
                phone.screenshot(self._screenshot_dir / name), SCREENSHOT_TIMEOUT
            )
        except (PhoneError, OSError, TimeoutError) as exc:
            log.warning("run.screenshot_failed", error=str(exc))
            return None
        if shot is not None:
            log.info("run.screenshot_kept", path=str(shot))
        return shot
