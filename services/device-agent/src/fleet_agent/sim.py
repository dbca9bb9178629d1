"""The simulated fleet: phones that take realistic time per step and never exist.

Serials are `<prefix>1` … `<prefix>N`; device n holds the TikTok accounts `sim_<n>_a`
and `sim_<n>_b`. Every step sleeps for a typical phone duration times the speed
factor (1.0 real time, 0 instant), so the same scripts and material checks run as
on a phone. A phone is a plain object and a sleep, never a thread, so one process
holds thousands. `unplug` / `plug` stand in for a cable being pulled; `fail_runs`
makes a phone's next runs fail the way a real one can (gone for a moment, a UI
element that never shows), for tests of what happens after such a failure; a named
step's element can be made missing once (an app update that moved a button), and
the phone then shows a small PNG screenshot and an XML hierarchy like a real one.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import structlog

from fleet_agent.driver import DeviceListener
from fleet_agent.phone import DeviceGoneError, ElementMissingError, PhoneError, Selector
from fleet_agent.remote import RemoteCallError, png, shell_words
from fleet_contracts.agent import DeviceInfo

log = structlog.get_logger(__name__)

# Seconds a mid-range phone typically takes for each kind of step.
PUSH_BASE = 0.8
PUSH_BYTES_PER_SECOND = 20e6
SHELL = 0.1
APP_START = 2.5
TAP = 0.7
TYPE_PER_CHAR = 0.03
TYPE_MAX = 3.0
PRESENT = 0.3
RPC = 0.05
SCREEN_WIDTH, SCREEN_HEIGHT = 720, 1280
# Noise rows of the simulated screenshot: about 1.4 MB, above NATS's 1 MiB payload
# limit, so every screenshot exercises the chunked reply.
SCREEN_NOISE_ROWS = 680
SIM_RPC_METHODS = frozenset(
    {"click", "swipe", "pressKey", "setText", "clearTextField", "waitForIdle", "ping"}
)


def tiny_png(width: int = 36, height: int = 64, rgb: tuple[int, int, int] = (40, 40, 48)) -> bytes:
    """A valid PNG of one colour: a phone-shaped screenshot a few hundred bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


class SimPhone:
    def __init__(self, serial: str, number: int, speed: float) -> None:
        self._serial = serial
        self.number = number
        self.speed = speed
        self.attached = True
        self.pushed: dict[str, int] = {}
        self.faults: list[PhoneError] = []
        """Failures the next steps raise, first one first."""
        self._png: bytes | None = None
        self.fail_step: str | None = None
        self.last_step = ""

    @property
    def serial(self) -> str:
        return self._serial

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            serial=self._serial,
            model="Simulated Pixel 7",
            android_version="14",
            battery=40 + (self.number * 7) % 60,
        )

    async def _take(self, seconds: float) -> None:
        if not self.attached:
            raise DeviceGoneError(f"device {self._serial} is not attached")
        if self.faults:
            raise self.faults.pop(0)
        await asyncio.sleep(seconds * self.speed)
        if not self.attached:
            raise DeviceGoneError(f"device {self._serial} was unplugged")

    async def push(self, local: Path, remote: str) -> None:
        # A local stat, on the loop: the agent checked the file moments before, off the
        # loop, and a thread hop per push was about a twelfth of the agent's CPU in the
        # bench's flood (where the simulator stands in for 1,000 phones at speed 0).
        size = local.stat().st_size  # noqa: ASYNC240
        await self._take(PUSH_BASE + size / PUSH_BYTES_PER_SECOND)
        self.pushed[remote] = size

    async def shell(self, command: str) -> str:
        await self._take(SHELL)
        if command.startswith("rm -rf "):
            folder = command.removeprefix("rm -rf ").strip("'")
            self.pushed = {k: v for k, v in self.pushed.items() if not k.startswith(folder)}
        return ""

    async def app_start(self, package: str) -> None:
        await self._take(APP_START)

    async def app_stop(self, package: str) -> None:
        await self._take(SHELL)

    def _check_step(self, step: str, selectors: list[Selector], within: float) -> None:
        self.last_step = step
        if not selectors or step == self.fail_step:
            if step == self.fail_step:
                self.fail_step = None
            raise ElementMissingError(step, selectors, within)

    async def tap(self, step: str, selectors: list[Selector], within: float) -> None:
        self._check_step(step, selectors, within)
        await self._take(TAP)

    async def type_text(
        self, step: str, selectors: list[Selector], text: str, within: float
    ) -> None:
        self._check_step(step, selectors, within)
        await self._take(TAP + min(TYPE_MAX, TYPE_PER_CHAR * len(text)))

    async def present(self, selectors: list[Selector], within: float) -> bool:
        # Optional elements (popups, volume sheet) are absent on a simulated phone.
        await self._take(PRESENT)
        return False

    async def screenshot(self, path: Path) -> Path | None:
        if not self.attached:
            raise DeviceGoneError(f"device {self._serial} is not attached")
        await asyncio.to_thread(path.write_bytes, tiny_png())
        return path

    async def wait(self, seconds: float) -> None:
        await self._take(seconds)

    # The custom-script API (`remote.RemotePhone`) ------------------------------------
    def device_info(self) -> dict[str, Any]:
        return {
            "currentPackageName": "com.android.launcher3",
            "displayWidth": SCREEN_WIDTH,
            "displayHeight": SCREEN_HEIGHT,
            "displayRotation": 0,
            "displaySizeDpX": 360,
            "displaySizeDpY": 640,
            "naturalOrientation": True,
            "productName": "sim_pixel_7",
            "screenOn": True,
            "sdkInt": 34,
            "serial": self._serial,
        }

    def _hierarchy(self) -> str:
        # After a missed step the root says which one, so failure evidence reads true.
        missed = f"simulated: no element for {self.last_step}" if self.last_step else ""
        nodes = [
            ("android.widget.FrameLayout", "", "", "[0,0][720,1280]", missed),
            (
                "android.widget.TextView",
                self._serial,
                "com.android.launcher3:id/title",
                "[40,120][680,200]",
                "",
            ),
            (
                "android.widget.Button",
                "Log in",
                "com.zhiliaoapp.musically:id/login",
                "[160,1000][560,1100]",
                "",
            ),
        ]
        inner = "".join(
            f"<node index={quoteattr(str(i))} text={quoteattr(text)}"
            f" resource-id={quoteattr(rid)} class={quoteattr(cls)}"
            f' package="com.android.launcher3" content-desc={quoteattr(desc)} clickable="true"'
            f" bounds={quoteattr(bounds)} />"
            for i, (cls, text, rid, bounds, desc) in enumerate(nodes)
        )
        return (
            "<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>"
            f'<hierarchy rotation="0">{inner}</hierarchy>'
        )

    async def rpc(self, method: str, params: Any, within: float) -> Any:
        await self._take(RPC)
        if method == "deviceInfo":
            return self.device_info()
        if method == "dumpWindowHierarchy":
            return self._hierarchy()
        if method in SIM_RPC_METHODS:
            return True
        raise RemoteCallError(f"method: {method!r} is not a UIAutomator2 method (-32601)")

    async def hierarchy(self, within: float) -> str:
        if not self.attached:
            raise DeviceGoneError(f"device {self._serial} is not attached")
        await self._take(RPC)
        return self._hierarchy()

    async def screenshot_png(self, within: float) -> bytes:
        await self._take(RPC)
        if self._png is None:
            self._png = await asyncio.to_thread(
                png, SCREEN_WIDTH, SCREEN_HEIGHT, self.number, SCREEN_NOISE_ROWS
            )
        return self._png

    async def adb(self, args: list[str], within: float) -> str:
        words = shell_words(args)
        await self._take(SHELL)
        if words[0] == "echo":
            return " ".join(words[1:]) + "\n"
        if words[:2] == ["getprop", "ro.product.model"]:
            return "Simulated Pixel 7\n"
        return ""


class SimDriver:
    name = "sim"

    def __init__(self, count: int, prefix: str, speed: float) -> None:
        self._phones = {
            f"{prefix}{n}": SimPhone(f"{prefix}{n}", n, speed) for n in range(1, count + 1)
        }
        self._listener: DeviceListener | None = None

    async def start(self, listener: DeviceListener) -> list[DeviceInfo]:
        self._listener = listener
        return [p.info() for p in self._phones.values() if p.attached]

    async def stop(self) -> None:
        self._listener = None

    def phone(self, serial: str) -> SimPhone | None:
        phone = self._phones.get(serial)
        return phone if phone is not None and phone.attached else None

    async def accounts(self, serial: str) -> list[dict[str, str]]:
        phone = self._phones.get(serial)
        if phone is None:
            return []
        n = phone.number
        return [
            {"username": f"sim_{n}_a", "platform": "tiktok"},
            {"username": f"sim_{n}_b", "platform": "tiktok"},
        ]

    def fail_runs(self, serial: str, kind: str, times: int = 1) -> None:
        """The phone's next `times` runs each fail at their first step: `device_gone`
        (adb loses the phone for a moment) or `ui_timeout` (an element never appears)."""
        phone = self._phones[serial]
        for _ in range(times):
            if kind == "device_gone":
                phone.faults.append(DeviceGoneError(f"device {serial} stopped answering"))
            elif kind == "ui_timeout":
                phone.faults.append(ElementMissingError("open app", [{"text": "Home"}], 0))
            else:
                raise ValueError(f"kind: {kind!r} is not device_gone or ui_timeout")

    def known(self, serial: str) -> bool:
        return serial in self._phones

    def fail_next(self, serial: str, step: str) -> None:
        """The next time the phone's run reaches `step`, its element is missing."""
        self._phones[serial].fail_step = step
        log.info("sim.will_fail", serial=serial, step=step)

    async def unplug(self, serial: str) -> None:
        phone = self._phones[serial]
        if not phone.attached:
            return
        phone.attached = False
        log.info("sim.unplugged", serial=serial)
        if self._listener is not None:
            await self._listener.device_disconnected(serial, "unplugged")

    async def plug(self, serial: str) -> None:
        phone = self._phones[serial]
        if phone.attached:
            return
        phone.attached = True
        log.info("sim.plugged", serial=serial)
        if self._listener is not None:
            await self._listener.device_connected(phone.info())
