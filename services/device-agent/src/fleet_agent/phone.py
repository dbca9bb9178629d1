"""What a script may do with a phone: the device handle, and the ways it can fail.

Both drivers hand scripts an object of this shape: `AdbPhone` (adbutils +
uiautomator2 on a real phone) and `SimPhone` (timed stand-ins). A selector is the
keyword set uiautomator2 takes (`{"resourceId": ..., "text": ...}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

Selector = Mapping[str, str]


def describe_selector(selector: Selector) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in selector.items())


class PhoneError(RuntimeError):
    """A phone operation failed; the message says which and why."""


class DeviceGoneError(PhoneError):
    """The phone stopped answering (unplugged, adb lost it, rebooted)."""


class ElementMissingError(PhoneError):
    """None of a step's selectors appeared on screen in time."""

    def __init__(self, step: str, selectors: list[Selector], within: float) -> None:
        tried = " | ".join(describe_selector(s) for s in selectors)
        super().__init__(f"step {step!r}: no element matching [{tried}] within {within:g}s")
        self.step = step
        self.selectors = selectors


class Phone(Protocol):
    """The device handle a script runs with. Every call may raise PhoneError."""

    @property
    def serial(self) -> str: ...

    async def push(self, local: Path, remote: str) -> None: ...

    async def shell(self, command: str) -> str: ...

    async def app_start(self, package: str) -> None: ...

    async def app_stop(self, package: str) -> None: ...

    async def tap(self, step: str, selectors: list[Selector], within: float) -> None:
        """Click the first of `selectors` that appears within `within` seconds."""
        ...

    async def type_text(
        self, step: str, selectors: list[Selector], text: str, within: float
    ) -> None: ...

    async def present(self, selectors: list[Selector], within: float) -> bool: ...

    async def screenshot(self, path: Path) -> Path | None: ...

    async def hierarchy(self, within: float) -> str:
        """The screen's UI hierarchy as XML (uiautomator's dump): failure evidence, and
        the custom-script API's `/rpc/hierarchy`."""
        ...

    async def wait(self, seconds: float) -> None:
        """A pause the flow needs (upload, sound loading); the simulator scales it."""
        ...
