"""The agent process: bus wiring, device inventory, heartbeats, run/stop requests.

`Agent(settings)` starts with `await agent.start()` (or `async with`) and ends with
`await agent.stop()`, which ends running scripts as failed with "agent stopping" first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from types import TracebackType
from typing import Self

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from fleet_agent import metrics
from fleet_agent.cache import MaterialCache, store_download
from fleet_agent.device_calls import answer as answer_device_call
from fleet_agent.driver import Driver
from fleet_agent.evidence import Evidence
from fleet_agent.outbox import ReportOutbox
from fleet_agent.phone import Phone
from fleet_agent.program import ProgramScript
from fleet_agent.runs import DEVICE_DISCONNECTED, Runner
from fleet_agent.scripts import Script, ScriptHost, discover, spec_of
from fleet_agent.settings import AgentSettings
from fleet_agent.sim import SimDriver
from fleet_contracts.agent import (
    AccountsReport,
    AgentReply,
    AgentStartedReport,
    DeviceConnectedReport,
    DeviceDisconnectedReport,
    DeviceInfo,
    Heartbeat,
    RunBatch,
    RunBatchReply,
    RunTask,
    StopRun,
)
from fleet_contracts.messages import new_id
from fleet_contracts.permissions import inbox_prefix
from fleet_contracts.subjects import (
    KV_SCRIPTS,
    REPORTS,
    agent_device_subject,
    agent_run_subject,
    agent_runs_subject,
    agent_stop_subject,
    heartbeat_subject,
    token,
)
from fleet_contracts.validation import describe
from fleet_runtime.bus import connect, ensure_streams
from fleet_runtime.logs import bind_correlation
from fleet_runtime.metrics import Exporter

log = structlog.get_logger(__name__)


def sim_control_subject(agent_id: str, action: str) -> str:
    """`sim.<agent>.unplug|plug`: pull or plug a simulated phone's cable (tests, demos);
    `sim.<agent>.fail` with {"serial", "step"}: that phone's next run fails the step."""
    return f"sim.{token(agent_id)}.{action}"


def choose_driver(settings: AgentSettings) -> Driver:
    sim = SimDriver(
        settings.agent_sim_devices, settings.agent_sim_serial_prefix, settings.agent_sim_speed
    )
    if settings.agent_driver == "sim":
        return sim
    from fleet_agent.adb import AdbDriver, adb_has_devices

    host, port = settings.adb_host_port
    if settings.agent_driver == "adb" or adb_has_devices(host, port):
        return AdbDriver(host, port, ui_timeout=settings.agent_ui_timeout_seconds)
    log.info("driver.sim_fallback", reason=f"no adb device at {host}:{port}")
    return sim


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        driver: Driver | None = None,
        scripts: dict[str, Script] | None = None,
    ) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.incarnation = new_id()
        """This process: runs sent to an earlier one are refused (fencing)."""
        self._driver_override = driver
        self._scripts_override = scripts
        self._driver: Driver | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._runner: Runner | None = None
        self._outbox: ReportOutbox | None = None
        self._devices: dict[str, DeviceInfo] = {}
        self._accounts: dict[str, list[dict[str, str]]] = {}
        self._scripts: dict[str, Script] = {}
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._cache: MaterialCache | None = None
        # Device changes seen while starting wait for agent.started to go out first.
        self._announced = asyncio.Event()
        self.metrics: Exporter | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def driver(self) -> Driver:
        assert self._driver is not None, "agent not started"
        return self._driver

    @property
    def runner(self) -> Runner:
        assert self._runner is not None, "agent not started"
        return self._runner

    @property
    def cache(self) -> MaterialCache:
        assert self._cache is not None, "agent not started"
        return self._cache

    @property
    def outbox(self) -> ReportOutbox:
        assert self._outbox is not None, "agent not started"
        return self._outbox

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "agent not started"
        return self._js

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "agent not started"
        return self._nc

    async def start(self) -> None:
        s = self.settings
        self.incarnation = new_id()
        with bind_correlation(None, agent_id=self.agent_id):
            self._nc = await connect(
                s.nats_url,
                f"fleet-agent-{self.agent_id}",
                on_reconnected=self._reconnected,
                link=s.nats_link(inbox_prefix("agent", self.agent_id)),
            )
            self._js = self._nc.jetstream()
            self._outbox = ReportOutbox(
                self._js, self.agent_id, window=s.agent_report_window_seconds
            )
            await self._ensure_streams()
            self._cache = MaterialCache(
                s.agent_material_cache_dir,
                s.agent_material_cache_max_bytes,
                store_download(self._js),
            )
            await asyncio.to_thread(self._cache.open)
            host = ScriptHost(
                agent_id=self.agent_id,
                material_roots=tuple(s.agent_material_roots),
                material_library=s.agent_material_library,
                library=self._cache,
                rng=random.Random(),
                ui_timeout=s.agent_ui_timeout_seconds,
            )
            self._scripts = (
                self._scripts_override if self._scripts_override is not None else discover(host)
            )
            await self._publish_catalogue()
            self._driver = self._driver_override or choose_driver(s)
            self._runner = Runner(
                agent_id=self.agent_id,
                outbox=self._outbox,
                scripts=self._scripts,
                phone_of=self._phone_of,
                platform_of=self._platform_of,
                screenshot_dir=s.agent_screenshot_dir,
                max_parallel=s.agent_max_parallel,
                incarnation=self.incarnation,
                run_log=s.agent_run_log,
                programs=self._program_for,
                evidence=Evidence(self._js, s.artifact_retention_hours),
            )
            devices = await self._driver.start(self)
            self._devices = {d.serial: d for d in devices}
            accounts = [await self._accounts_report(d.serial) for d in devices]
            # Listen before announcing: a scheduler may dispatch as soon as it hears us.
            nc = self._nc
            self._subs = [
                await nc.subscribe(agent_run_subject(self.agent_id), cb=self._on_run),
                await nc.subscribe(agent_runs_subject(self.agent_id), cb=self._on_runs),
                await nc.subscribe(agent_stop_subject(self.agent_id), cb=self._on_stop),
                await nc.subscribe(agent_device_subject(self.agent_id), cb=self._on_device_call),
            ]
            if isinstance(self._driver, SimDriver):
                for action in ("unplug", "plug", "fail"):
                    self._subs.append(
                        await nc.subscribe(
                            sim_control_subject(self.agent_id, action), cb=self._on_sim
                        )
                    )
            await nc.flush()
            await self._outbox.send(
                AgentStartedReport(
                    agent_id=self.agent_id,
                    host=s.agent_host,
                    incarnation=self.incarnation,
                    devices=devices,
                    scripts=[
                        spec_of(script, builtin=name == "post")
                        for name, script in sorted(self._scripts.items())
                    ],
                ),
            )
            self._announced.set()
            await self._outbox.send_all(list(accounts))
            self._heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeats")
            self.metrics = metrics.start(
                s.metrics_enabled,
                s.metrics_host,
                s.agent_metrics_port,
                metrics.HostCollector(
                    self.agent_id,
                    s.agent_host,
                    lambda: len(self._devices),
                    lambda: len(self.runner.running()),
                ),
            )
            log.info(
                "agent.started",
                driver=self._driver.name,
                devices=len(devices),
                scripts=sorted(self._scripts),
            )

    async def stop(self) -> None:
        if self._nc is None:
            return
        with bind_correlation(None, agent_id=self.agent_id):
            for sub in self._subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._subs = []
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.close)
                self.metrics = None
            if self._runner is not None:
                await self._runner.end_all("agent stopping")
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._heartbeat
            if self._driver is not None:
                await self._driver.stop()
            if self._outbox is not None:
                await self._outbox.close()
                self._outbox = None
            # Subscriptions are gone and runs have ended: what is left is to push out
            # pending publishes. A bounded flush, then close; nats-py's drain() waits out
            # its own 30 s timeout on a half-open link (a host cut off) and ignores
            # cancellation meanwhile.
            try:
                await self._nc.flush(timeout=2)
            except Exception as exc:
                log.warning("agent.flush_failed", error=str(exc) or repr(exc))
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
            log.info("agent.stopped")

    # Inventory -----------------------------------------------------------------------
    def _phone_of(self, serial: str) -> Phone | None:
        if serial not in self._devices:
            return None
        return self.driver.phone(serial)

    def _platform_of(self, serial: str, username: str | None) -> str | None:
        for account in self._accounts.get(serial, []):
            if account.get("username") == username:
                return account.get("platform")
        return None

    async def _accounts_report(self, serial: str) -> AccountsReport:
        accounts = await self.driver.accounts(serial)
        self._accounts[serial] = accounts
        return AccountsReport(agent_id=self.agent_id, serial=serial, accounts=accounts)

    async def device_connected(self, info: DeviceInfo) -> None:
        await self._announced.wait()
        with bind_correlation(None, agent_id=self.agent_id, serial=info.serial):
            self._devices[info.serial] = info
            log.info("device.connected", model=info.model, android=info.android_version)
            await self.outbox.send(
                DeviceConnectedReport(
                    agent_id=self.agent_id, host=self.settings.agent_host, device=info
                )
            )
            await self.outbox.send(await self._accounts_report(info.serial))

    async def device_disconnected(self, serial: str, reason: str) -> None:
        await self._announced.wait()
        with bind_correlation(None, agent_id=self.agent_id, serial=serial):
            log.info("device.disconnected", reason=reason)
            await self.runner.end_on(serial, DEVICE_DISCONNECTED)
            self._devices.pop(serial, None)
            self._accounts.pop(serial, None)
            await self.outbox.send(
                DeviceDisconnectedReport(agent_id=self.agent_id, serial=serial, reason=reason)
            )

    # Bus -----------------------------------------------------------------------------
    async def _publish_catalogue(self) -> None:
        plugins = [spec_of(script) for name, script in self._scripts.items() if name != "post"]
        if not plugins:
            return
        kv = await self._scripts_bucket()
        for spec in plugins:
            await kv.put(spec.name, spec.model_dump_json().encode())

    async def _scripts_bucket(self) -> KeyValue:
        try:
            return await self.js.key_value(KV_SCRIPTS)
        except BucketNotFoundError:
            pass
        if self.settings.nats_nkey_seed_file is not None:
            # A host's identity may write script specs but not create buckets.
            raise RuntimeError(
                f"the KV bucket {KV_SCRIPTS!r} does not exist yet: start a gateway first"
            )
        try:
            return await self.js.create_key_value(config=self.settings.kv_config(KV_SCRIPTS))
        except BadRequestError:
            # Another service created it between our two calls.
            return await self.js.key_value(KV_SCRIPTS)

    async def _ensure_streams(self) -> None:
        """Create the streams only when they are missing and this agent may.

        The services own the streams. A host's NATS identity (its own, or its leaf
        node's) may look REPORTS up but never create or change a stream, so a host
        cannot reconfigure or delete them; until they exist its reports are retried.
        """
        s = self.settings
        try:
            await self.js.stream_info(REPORTS.name)
            return
        except NotFoundError:
            pass
        if s.nats_nkey_seed_file is not None:
            log.warning("agent.streams_missing", message="waiting for the services to make them")
            return
        try:
            await ensure_streams(self.js, s.streams, replicas=s.nats_stream_replicas)
        except (NatsError, TimeoutError) as exc:
            log.warning("agent.streams_not_made", error=str(exc) or repr(exc))

    async def _reconnected(self) -> None:
        # A NATS restarted without its state has lost the streams and the catalogue.
        try:
            await self._ensure_streams()
            await self._publish_catalogue()
        except Exception as exc:
            log.warning("agent.reconnect_setup_failed", error=str(exc))

    async def _heartbeats(self) -> None:
        interval = self.settings.agent_heartbeat_seconds
        subject = heartbeat_subject(self.agent_id)
        while True:
            beat = Heartbeat(
                agent_id=self.agent_id,
                host=self.settings.agent_host,
                devices=[
                    self.runner.status(serial, info.battery)
                    for serial, info in self._devices.items()
                ],
                interval_seconds=interval,
                incarnation=self.incarnation,
                material_cache=self.cache.status(),
            )
            try:
                # Defaults left out: a 1,000-phone heartbeat stays ~45 kB, one message.
                await self.nc.publish(subject, beat.model_dump_json(exclude_defaults=True).encode())
            except Exception as exc:
                log.warning("heartbeat.failed", error=str(exc))
            await asyncio.sleep(interval)

    async def _reply(self, msg: Msg, reply: AgentReply) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply.model_dump_json().encode())

    async def _on_run(self, msg: Msg) -> None:
        try:
            request = RunTask.from_bytes(msg.data)
        except ValidationError as exc:
            await self._reply(
                msg, AgentReply(accepted=False, reason=f"bad RunTask: {describe(exc)}")
            )
            return
        with bind_correlation(
            request.correlation_id, task_id=request.task_id, serial=request.serial
        ):
            reply = self.runner.accept(request)
            if not reply.accepted:
                log.info("run.refused", reason=reply.reason)
            await self._reply(msg, reply)

    async def _on_runs(self, msg: Msg) -> None:
        """Many runs in one request: each accepted or refused as if it came alone."""
        try:
            batch = RunBatch.from_bytes(msg.data)
        except ValidationError as exc:
            reason = f"bad RunBatch: {describe(exc)}"
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(
                        RunBatchReply(replies=[AgentReply(accepted=False, reason=reason)])
                        .model_dump_json()
                        .encode()
                    )
            return
        replies: list[AgentReply] = []
        for request in batch.runs:
            with bind_correlation(
                request.correlation_id, task_id=request.task_id, serial=request.serial
            ):
                reply = self.runner.accept(request)
                if not reply.accepted:
                    log.info("run.refused", reason=reply.reason)
            replies.append(reply)
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(RunBatchReply(replies=replies).model_dump_json().encode())

    async def _on_stop(self, msg: Msg) -> None:
        try:
            request = StopRun.from_bytes(msg.data)
        except ValidationError as exc:
            await self._reply(
                msg, AgentReply(accepted=False, reason=f"bad StopRun: {describe(exc)}")
            )
            return
        with bind_correlation(request.correlation_id, task_id=request.task_id):
            log.info("run.stop_requested", reason=request.reason)
            await self._reply(msg, self.runner.stop(request))

    def _program_for(self, request: RunTask) -> ProgramScript | str:
        """The run of a registered custom script, or why this host will not run it."""
        program = request.program
        assert program is not None
        if program.hosts and self.agent_id not in program.hosts:
            return f"custom script {program.name!r} is not registered on agent {self.agent_id}"
        if not request.session_id:
            return f"custom script {program.name!r} came without its session"
        return ProgramScript(
            program, request.session_id, request.serial, self.settings.agent_api_base
        )

    async def _on_device_call(self, msg: Msg) -> None:
        # Each call in its own task: a slow phone must not hold back calls on the others.
        task = asyncio.create_task(answer_device_call(self.nc, msg, self._phone_of))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _on_sim(self, msg: Msg) -> None:
        driver = self.driver
        assert isinstance(driver, SimDriver)
        action = msg.subject.rsplit(".", 1)[-1]
        try:
            body = json.loads(msg.data)
            serial = str(body["serial"])
            step = str(body["step"]) if action == "fail" else ""
        except (ValueError, KeyError, TypeError):
            await self._reply(
                msg,
                AgentReply(
                    accepted=False,
                    reason='body must be {"serial": ...} ({"serial", "step"} for fail)',
                ),
            )
            return
        if not driver.known(serial):
            await self._reply(
                msg, AgentReply(accepted=False, reason=f"no simulated device {serial}")
            )
            return
        # The answer comes once the reports are out, so a caller can read them next.
        if action == "fail":
            driver.fail_next(serial, step)
        elif action == "unplug":
            await driver.unplug(serial)
        else:
            await driver.plug(serial)
        await self._reply(msg, AgentReply(accepted=True))
