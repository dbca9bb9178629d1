"""A registered custom script run as a task: a program started without a shell.

The program gets TikMatrix's environment (`TIKMATRIX_API_BASE`, `TIKMATRIX_SESSION_ID`,
`TIKMATRIX_SERIAL`, `TIKMATRIX_PACKAGE`, `TIKMATRIX_PLATFORM`, plus
`TIKMATRIX_SCRIPT_CONFIG` and `TIKMATRIX_TASK_ID`) and drives the phone back through
the gateway with the lease made for its run. Its stdout and stderr go to the task's
log as progress steps named `output`, at most `MAX_OUTPUT_BYTES` in all; its exit
code decides the outcome; past its timeout, or when the task is stopped, its whole
process group is ended.

The agent's own `FLEET_*` variables are not passed on: they may name its credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict

from fleet_agent.scripts import CancelToken, Progress, ScriptFailure, Target
from fleet_contracts.agent import OUTPUT_STEP, RunTask
from fleet_contracts.sessions import CustomProgram, Platform

log = structlog.get_logger(__name__)

MAX_OUTPUT_BYTES = 256 * 1024
FLUSH_EVERY = 0.6
"""Above the progress throttle's 0.5 s, so no flushed piece is replaced by the next."""
MAX_PIECE = 64 * 1024
KILL_GRACE = 3.0


class FreeConfig(BaseModel):
    """A custom script's config: any JSON object, handed to the program as is."""

    model_config = ConfigDict(extra="allow")


@dataclass
class Output:
    """What the program printed, bounded, waiting to be flushed to the task's log."""

    pending: list[str] = field(default_factory=list)
    total: int = 0
    dropped: int = 0
    last_stderr: str = ""
    tail: str = ""

    def add(self, text: str, stream: str) -> None:
        if stream == "stderr":
            lines = [line for line in text.splitlines() if line.strip()]
            if lines:
                self.last_stderr = lines[-1][-300:]
            text = "".join(f"[stderr] {line}\n" for line in text.splitlines())
        self.tail = (self.tail + text)[-2000:]
        room = MAX_OUTPUT_BYTES - self.total
        if room <= 0:
            self.dropped += len(text.encode())
            return
        data = text.encode()
        if len(data) > room:
            self.dropped += len(data) - room
            text = data[:room].decode(errors="ignore")
        self.total += len(text.encode())
        self.pending.append(text)

    def take(self) -> str:
        text = "".join(self.pending)
        if len(text.encode()) > MAX_PIECE:
            head = text.encode()[:MAX_PIECE].decode(errors="ignore")
            self.pending = [text[len(head) :]]
            return head
        self.pending = []
        return text


class ProgramScript:
    """One run of one registered program (a `Script` the runner drives like any other)."""

    name: ClassVar[str] = "custom"
    description: ClassVar[str] = "a registered custom script"
    config_model: ClassVar[type[BaseModel]] = FreeConfig

    def __init__(self, program: CustomProgram, session_id: str, serial: str, api_base: str) -> None:
        self.program = program
        self.session_id = session_id
        self.serial = serial
        self.api_base = api_base.rstrip("/")

    def environment(self, task_id: int, config: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        platform = Platform(self.program.platform)
        env.update(
            TIKMATRIX_API_BASE=self.api_base,
            TIKMATRIX_SESSION_ID=self.session_id,
            TIKMATRIX_SERIAL=self.serial,
            TIKMATRIX_PACKAGE=platform.package,
            TIKMATRIX_PLATFORM=platform.value,
            TIKMATRIX_SCRIPT_CONFIG=json.dumps(config),
            TIKMATRIX_TASK_ID=str(task_id),
        )
        return env

    async def run(
        self, target: Target, config: Any, progress: Progress, cancel: CancelToken
    ) -> dict[str, Any]:
        program = self.program
        platform = Platform(program.platform)
        settings = config.model_dump() if isinstance(config, BaseModel) else dict(config)
        if platform is not Platform.GENERIC:
            await target.phone.app_start(platform.package)
        try:
            code, output = await self._execute(target.task_id, settings, progress)
        finally:
            if platform is not Platform.GENERIC:
                with contextlib.suppress(Exception):
                    await target.phone.app_stop(platform.package)
        if code != 0:
            detail = f": {output.last_stderr}" if output.last_stderr else ""
            raise ScriptFailure(
                f"custom script {program.name!r} exited with code {code}{detail}", on_screen=False
            )
        return {"exit_code": 0, "output_tail": output.tail, "output_dropped": output.dropped}

    async def _execute(
        self, task_id: int, config: dict[str, Any], progress: Progress
    ) -> tuple[int, Output]:
        program = self.program
        try:
            proc = await asyncio.create_subprocess_exec(
                *program.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(task_id, config),
                start_new_session=True,
            )
        except OSError as exc:
            raise ScriptFailure(
                f"custom script {program.name!r}: cannot start {program.command[0]!r}: {exc}",
                on_screen=False,
            ) from exc
        log.info("program.started", pid=proc.pid, program=program.name)
        output = Output()
        readers = [
            asyncio.create_task(_read(proc.stdout, "stdout", output)),
            asyncio.create_task(_read(proc.stderr, "stderr", output)),
        ]
        flusher = asyncio.create_task(_flush_every(output, progress))
        try:
            try:
                code = await asyncio.wait_for(proc.wait(), program.timeout_secs)
            except TimeoutError:
                await _end(proc)
                raise ScriptFailure(
                    f"custom script {program.name!r} ran past its timeout of "
                    f"{program.timeout_secs}s and was killed",
                    on_screen=False,
                ) from None
            await asyncio.gather(*readers)
        finally:
            # A stop, an unplug or the timeout: the program must not outlive its run.
            await _end(proc)
            for reader in readers:
                reader.cancel()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await _flush_rest(output, progress)
        log.info("program.exited", code=code, output_bytes=output.total)
        return code, output


async def _read(stream: asyncio.StreamReader | None, name: str, output: Output) -> None:
    if stream is None:
        return
    while data := await stream.read(8192):
        output.add(data.decode(errors="replace"), name)


async def _flush_every(output: Output, progress: Progress) -> None:
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        if output.pending:
            await progress(OUTPUT_STEP, None, output.take())


async def _flush_rest(output: Output, progress: Progress) -> None:
    if output.dropped:
        output.pending.append(f"[output truncated: {output.dropped} more bytes not kept]\n")
    while output.pending:
        # Spaced past the throttle's interval: each piece is sent, none replaced.
        await asyncio.sleep(FLUSH_EVERY)
        await progress(OUTPUT_STEP, None, output.take())


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
            return


def program_for(agent_id: str, api_base: str, request: RunTask) -> ProgramScript | str:
    """The run of a registered custom script, or why this host will not run it."""
    program = request.program
    assert program is not None
    if program.hosts and agent_id not in program.hosts:
        return f"custom script {program.name!r} is not registered on agent {agent_id}"
    if not request.session_id:
        return f"custom script {program.name!r} came without its session"
    return ProgramScript(program, request.session_id, request.serial, api_base)
