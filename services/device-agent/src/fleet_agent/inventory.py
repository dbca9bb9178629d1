"""The phones this agent holds and their accounts, kept as the driver sees them come and go.

The driver tells the inventory (a `DeviceListener`) of phones plugged and unplugged after
start; each change is reported, but only once `agent.started` has gone out, so the
scheduler never hears of a phone before it knows the agent. An unplugged phone's run is
ended (and its outcome reported) before the phone is reported gone.
"""

from __future__ import annotations

import asyncio

import structlog

from fleet_agent.driver import Driver
from fleet_agent.outbox import ReportOutbox
from fleet_agent.phone import Phone
from fleet_agent.runs import DEVICE_DISCONNECTED, Runner
from fleet_contracts.agent import (
    AccountsReport,
    DeviceConnectedReport,
    DeviceDisconnectedReport,
    DeviceInfo,
    DeviceStatus,
)
from fleet_runtime.logs import bind_correlation

log = structlog.get_logger(__name__)


class Inventory:
    def __init__(self, agent_id: str, host: str, driver: Driver, outbox: ReportOutbox) -> None:
        self._agent_id = agent_id
        self._host = host
        self._driver = driver
        self._outbox = outbox
        self._devices: dict[str, DeviceInfo] = {}
        self._accounts: dict[str, list[dict[str, str]]] = {}
        self.runner: Runner | None = None
        """Set once the runner exists: an unplugged phone's run is ended through it."""
        self.announced = asyncio.Event()
        """Set once `agent.started` is out: device changes wait for it."""

    def __len__(self) -> int:
        return len(self._devices)

    def adopt(self, devices: list[DeviceInfo]) -> None:
        """The phones attached at start."""
        self._devices = {d.serial: d for d in devices}

    def phone_of(self, serial: str) -> Phone | None:
        if serial not in self._devices:
            return None
        return self._driver.phone(serial)

    def platform_of(self, serial: str, username: str | None) -> str | None:
        for account in self._accounts.get(serial, []):
            if account.get("username") == username:
                return account.get("platform")
        return None

    def statuses(self, runner: Runner) -> list[DeviceStatus]:
        """Each phone, busy or not, as a heartbeat lists it."""
        return [runner.status(serial, info.battery) for serial, info in self._devices.items()]

    async def accounts_report(self, serial: str) -> AccountsReport:
        accounts = await self._driver.accounts(serial)
        self._accounts[serial] = accounts
        return AccountsReport(agent_id=self._agent_id, serial=serial, accounts=accounts)

    async def device_connected(self, info: DeviceInfo) -> None:
        await self.announced.wait()
        with bind_correlation(None, agent_id=self._agent_id, serial=info.serial):
            self._devices[info.serial] = info
            log.info("device.connected", model=info.model, android=info.android_version)
            await self._outbox.send(
                DeviceConnectedReport(agent_id=self._agent_id, host=self._host, device=info)
            )
            await self._outbox.send(await self.accounts_report(info.serial))

    async def device_disconnected(self, serial: str, reason: str) -> None:
        await self.announced.wait()
        with bind_correlation(None, agent_id=self._agent_id, serial=serial):
            log.info("device.disconnected", reason=reason)
            if self.runner is not None:
                await self.runner.end_on(serial, DEVICE_DISCONNECTED)
            self._devices.pop(serial, None)
            self._accounts.pop(serial, None)
            await self._outbox.send(
                DeviceDisconnectedReport(agent_id=self._agent_id, serial=serial, reason=reason)
            )
