"""What others ask of this agent on core NATS, and the answers.

`agent.<id>.run` (one `RunTask`) and `agent.<id>.runs` (a `RunBatch`, answered run by run
in one `RunBatchReply`) are accepted or refused at once; `agent.<id>.stop` ends a run;
`agent.<id>.device` calls a phone (each in its own task, so a slow phone holds back no
other); `sim.<id>.unplug|plug|fail` drive the simulated phones (tests, demos).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from fleet_agent.device_calls import answer as answer_device_call
from fleet_agent.driver import Driver
from fleet_agent.inventory import Inventory
from fleet_agent.runs import Runner
from fleet_agent.sim import SimDriver
from fleet_contracts.agent import AgentReply, RunBatch, RunBatchReply, RunTask, StopRun
from fleet_contracts.subjects import (
    agent_device_subject,
    agent_run_subject,
    agent_runs_subject,
    agent_stop_subject,
    token,
)
from fleet_contracts.validation import describe
from fleet_runtime.logs import bind_correlation

log = structlog.get_logger(__name__)


def sim_control_subject(agent_id: str, action: str) -> str:
    """`sim.<agent>.unplug|plug`: pull or plug a simulated phone's cable (tests, demos);
    `sim.<agent>.fail` with {"serial", "step"}: that phone's next run fails the step."""
    return f"sim.{token(agent_id)}.{action}"


async def _reply(msg: Msg, reply: AgentReply) -> None:
    if msg.reply:
        with contextlib.suppress(Exception):
            await msg.respond(reply.model_dump_json().encode())


class AgentRequests:
    def __init__(
        self, agent_id: str, nc: Client, runner: Runner, driver: Driver, inventory: Inventory
    ) -> None:
        self._agent_id = agent_id
        self._nc = nc
        self._runner = runner
        self._driver = driver
        self._inventory = inventory
        self._calls: set[asyncio.Task[None]] = set()

    async def subscribe(self) -> list[Subscription]:
        """Listen on every subject this agent answers; the subscriptions, to end later."""
        nc, me = self._nc, self._agent_id
        subs = [
            await nc.subscribe(agent_run_subject(me), cb=self._on_run),
            await nc.subscribe(agent_runs_subject(me), cb=self._on_runs),
            await nc.subscribe(agent_stop_subject(me), cb=self._on_stop),
            await nc.subscribe(agent_device_subject(me), cb=self._on_device_call),
        ]
        if isinstance(self._driver, SimDriver):
            for action in ("unplug", "plug", "fail"):
                subs.append(await nc.subscribe(sim_control_subject(me, action), cb=self._on_sim))
        return subs

    def _accept(self, request: RunTask) -> AgentReply:
        reply = self._runner.accept(request)
        if not reply.accepted:
            # Bound only here: binding costs as much as accepting, for every run of a batch.
            with bind_correlation(
                request.correlation_id, task_id=request.task_id, serial=request.serial
            ):
                log.info("run.refused", reason=reply.reason)
        return reply

    async def _on_run(self, msg: Msg) -> None:
        try:
            request = RunTask.from_bytes(msg.data)
        except ValidationError as exc:
            await _reply(msg, AgentReply(accepted=False, reason=f"bad RunTask: {describe(exc)}"))
            return
        await _reply(msg, self._accept(request))

    async def _on_runs(self, msg: Msg) -> None:
        """Many runs in one request: each accepted or refused as if it came alone."""
        try:
            batch = RunBatch.from_bytes(msg.data)
        except ValidationError as exc:
            replies = [AgentReply(accepted=False, reason=f"bad RunBatch: {describe(exc)}")]
        else:
            replies = [self._accept(request) for request in batch.runs]
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(RunBatchReply(replies=replies).model_dump_json().encode())

    async def _on_stop(self, msg: Msg) -> None:
        try:
            request = StopRun.from_bytes(msg.data)
        except ValidationError as exc:
            await _reply(msg, AgentReply(accepted=False, reason=f"bad StopRun: {describe(exc)}"))
            return
        with bind_correlation(request.correlation_id, task_id=request.task_id):
            log.info("run.stop_requested", reason=request.reason)
            await _reply(msg, self._runner.stop(request))

    async def _on_device_call(self, msg: Msg) -> None:
        # Each call in its own task: a slow phone must not hold back calls on the others.
        task = asyncio.create_task(answer_device_call(self._nc, msg, self._inventory.phone_of))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _on_sim(self, msg: Msg) -> None:
        driver = self._driver
        assert isinstance(driver, SimDriver)
        action = msg.subject.rsplit(".", 1)[-1]
        try:
            body = json.loads(msg.data)
            serial = str(body["serial"])
            step = str(body["step"]) if action == "fail" else ""
        except (ValueError, KeyError, TypeError):
            await _reply(
                msg,
                AgentReply(
                    accepted=False,
                    reason='body must be {"serial": ...} ({"serial", "step"} for fail)',
                ),
            )
            return
        if not driver.known(serial):
            await _reply(msg, AgentReply(accepted=False, reason=f"no simulated device {serial}"))
            return
        # The answer comes once the reports are out, so a caller can read them next.
        if action == "fail":
            driver.fail_next(serial, step)
        elif action == "unplug":
            await driver.unplug(serial)
        else:
            await driver.plug(serial)
        await _reply(msg, AgentReply(accepted=True))
