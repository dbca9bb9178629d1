"""The agent process: wires its parts together and starts and stops them in order.

`Agent(settings)` starts with `await agent.start()` (or `async with`) and ends with
`await agent.stop()`, which ends running scripts as failed with "agent stopping" first.
The parts, each in its own module: the phones (`inventory`), runs (`runs`), what others
ask of the agent (`agent_requests`), reports out (`outbox`), heartbeats (`heartbeats`),
streams and the scripts' catalogue (`bus_setup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from types import TracebackType
from typing import Self

import structlog
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from fleet_agent import metrics
from fleet_agent.agent_requests import AgentRequests, sim_control_subject
from fleet_agent.bus_setup import ensure_streams_if_allowed, publish_catalogue
from fleet_agent.cache import MaterialCache, store_download
from fleet_agent.driver import Driver
from fleet_agent.evidence import Evidence
from fleet_agent.heartbeats import beat
from fleet_agent.inventory import Inventory
from fleet_agent.outbox import ReportOutbox
from fleet_agent.program import program_for
from fleet_agent.runs import Runner
from fleet_agent.scripts import Script, ScriptHost, discover, spec_of
from fleet_agent.settings import AgentSettings
from fleet_agent.sim import SimDriver
from fleet_contracts.agent import AgentStartedReport
from fleet_contracts.messages import new_id
from fleet_contracts.permissions import inbox_prefix
from fleet_runtime.bus import connect
from fleet_runtime.logs import bind_correlation
from fleet_runtime.metrics import Exporter

__all__ = ["Agent", "choose_driver", "sim_control_subject"]

log = structlog.get_logger(__name__)


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
        self._inventory: Inventory | None = None
        self._scripts: dict[str, Script] = {}
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._cache: MaterialCache | None = None
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
    def outbox(self) -> ReportOutbox:
        assert self._outbox is not None, "agent not started"
        return self._outbox

    @property
    def cache(self) -> MaterialCache:
        assert self._cache is not None, "agent not started"
        return self._cache

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
            self._nc = nc = await connect(
                s.nats_url,
                f"fleet-agent-{self.agent_id}",
                on_reconnected=self._reconnected,
                link=s.nats_link(inbox_prefix("agent", self.agent_id)),
            )
            self._js = js = nc.jetstream()
            self._outbox = outbox = ReportOutbox(
                js, self.agent_id, window=s.agent_report_window_seconds
            )
            await ensure_streams_if_allowed(js, s)
            self._cache = MaterialCache(
                s.agent_material_cache_dir, s.agent_material_cache_max_bytes, store_download(js)
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
            await publish_catalogue(js, s, self._scripts)
            self._driver = driver = self._driver_override or choose_driver(s)
            self._inventory = inventory = Inventory(self.agent_id, s.agent_host, driver, outbox)
            self._runner = runner = Runner(
                agent_id=self.agent_id,
                outbox=outbox,
                scripts=self._scripts,
                phone_of=inventory.phone_of,
                platform_of=inventory.platform_of,
                screenshot_dir=s.agent_screenshot_dir,
                max_parallel=s.agent_max_parallel,
                incarnation=self.incarnation,
                run_log=s.agent_run_log,
                programs=functools.partial(program_for, self.agent_id, s.agent_api_base),
                evidence=Evidence(js, s.artifact_retention_hours),
            )
            inventory.runner = runner
            devices = await driver.start(inventory)
            inventory.adopt(devices)
            accounts = [await inventory.accounts_report(d.serial) for d in devices]
            # Listen before announcing: a scheduler may dispatch as soon as it hears us.
            requests = AgentRequests(self.agent_id, nc, runner, driver, inventory)
            self._subs = await requests.subscribe()
            await nc.flush()
            await outbox.send(
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
            inventory.announced.set()
            await outbox.send_all(list(accounts))
            self._heartbeat = asyncio.create_task(
                beat(
                    nc,
                    s,
                    self.incarnation,
                    lambda: inventory.statuses(runner),
                    self.cache.status,
                ),
                name="heartbeats",
            )
            self.metrics = metrics.start(
                s.metrics_enabled,
                s.metrics_host,
                s.agent_metrics_port,
                metrics.HostCollector(
                    self.agent_id,
                    s.agent_host,
                    lambda: len(inventory),
                    lambda: len(runner.running()),
                ),
            )
            log.info(
                "agent.started",
                driver=driver.name,
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

    async def _reconnected(self) -> None:
        # A NATS restarted without its state has lost the streams and the catalogue.
        try:
            await ensure_streams_if_allowed(self.js, self.settings)
            await publish_catalogue(self.js, self.settings, self._scripts)
        except Exception as exc:
            log.warning("agent.reconnect_setup_failed", error=str(exc))
