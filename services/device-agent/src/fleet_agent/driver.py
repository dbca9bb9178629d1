"""The seam between the agent and the phones: a driver finds phones and hands out
device handles. `adb.AdbDriver` drives real phones, `sim.SimDriver` simulated ones."""

from __future__ import annotations

from typing import Protocol

from fleet_agent.phone import Phone
from fleet_contracts.agent import DeviceInfo


class DeviceListener(Protocol):
    """Told by the driver when phones come and go after start."""

    async def device_connected(self, info: DeviceInfo) -> None: ...

    async def device_disconnected(self, serial: str, reason: str) -> None: ...


class Driver(Protocol):
    name: str

    async def start(self, listener: DeviceListener) -> list[DeviceInfo]:
        """Begin watching; return the phones attached now."""
        ...

    async def stop(self) -> None: ...

    def phone(self, serial: str) -> Phone | None:
        """The handle of an attached phone, None when it is not attached."""
        ...

    async def accounts(self, serial: str) -> list[dict[str, str]]:
        """The accounts found on the phone: `[{"username": ..., "platform": ...}]`."""
        ...
