"""Real phones: adbutils for discovery, shell and push; uiautomator2 for the UI.

Discovery follows the adb server's `host:track-devices` stream (the server pushes
every change; nothing polls) in one background thread; each change is handed to the
event loop in order. Every blocking adbutils / uiautomator2 call runs in a worker
thread under a timeout, so a hung phone costs a timeout, never the agent.

Accounts: `dumpsys account` lists the accounts Android's AccountManager holds;
entries of TikTok's and Instagram's account types are reported with their platform.
Apps that keep their login to themselves report nothing, and the operator ties such
usernames to the phone through the API instead.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from adbutils import AdbClient, AdbDevice, AdbError
from adbutils._adb import AdbConnection

from fleet_agent.driver import DeviceListener
from fleet_agent.phone import DeviceGoneError, ElementMissingError, PhoneError, Selector
from fleet_agent.remote import RemoteCallError, shell_words
from fleet_agent.scripts.post_selectors import INSTAGRAM_PACKAGE, TIKTOK_PACKAGE
from fleet_contracts.agent import DeviceInfo

log = structlog.get_logger(__name__)

T = TypeVar("T")

SHELL_TIMEOUT = 30.0
PUSH_TIMEOUT = 300.0
UI_CONNECT_TIMEOUT = 90.0
POLL = 0.3
ACCOUNT_PLATFORMS = {TIKTOK_PACKAGE: "tiktok", INSTAGRAM_PACKAGE: "instagram"}
_ACCOUNT_RE = re.compile(r"Account \{name=(?P<name>[^,]+), type=(?P<type>[^}]+)\}")
_LEVEL_RE = re.compile(r"^\s*level:\s*(\d+)", re.MULTILINE)


class UiObject(Protocol):
    """The slice of uiautomator2's UiObject the flows use."""

    @property
    def exists(self) -> Any: ...

    def click(self, timeout: float | None = None) -> Any: ...

    def set_text(self, text: str, timeout: float | None = None) -> Any: ...


class UiDevice(Protocol):
    """The slice of `uiautomator2.Device` the flows use."""

    def __call__(self, **selector: Any) -> UiObject: ...

    def app_start(self, package_name: str) -> Any: ...

    def app_stop(self, package_name: str) -> Any: ...

    def screenshot(self, filename: str) -> Any: ...

    def jsonrpc_call(self, method: str, params: Any = None, timeout: float = 10) -> Any: ...

    def dump_hierarchy(self) -> str: ...


UiFactory = Callable[[AdbDevice], UiDevice]


def connect_ui(device: AdbDevice) -> UiDevice:
    import uiautomator2

    ui: UiDevice = uiautomator2.connect(device)
    return ui


def server_answers(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def adb_has_devices(host: str, port: int) -> bool:
    """True when an adb server answers at host:port and holds at least one phone.

    Probed with a plain socket first: adbutils would start an adb server of its own
    when none answers, which is not the agent's business.
    """
    if not server_answers(host, port):
        return False
    try:
        infos = AdbClient(host=host, port=port, socket_timeout=3).list()
    except (AdbError, OSError):
        return False
    return any(info.state == "device" for info in infos)


def parse_track_block(block: str) -> dict[str, str]:
    """`serial\\tstate` lines of one track-devices update: serial -> state."""
    states: dict[str, str] = {}
    for line in block.splitlines():
        serial, sep, state = line.strip().partition("\t")
        if sep:
            states[serial] = state.strip()
    return states


def parse_accounts(dumpsys: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for match in _ACCOUNT_RE.finditer(dumpsys):
        platform = ACCOUNT_PLATFORMS.get(match["type"].strip())
        if platform is None:
            continue
        entry = {"username": match["name"].strip(), "platform": platform}
        if entry not in found:
            found.append(entry)
    return found


def parse_battery(dumpsys: str) -> int | None:
    match = _LEVEL_RE.search(dumpsys)
    return int(match.group(1)) if match else None


class AdbPhone:
    """A real phone: adb for files and shell, uiautomator2 (started lazily) for the UI."""

    def __init__(
        self,
        device: AdbDevice,
        *,
        client: AdbClient,
        ui_factory: UiFactory = connect_ui,
        ui_timeout: float = 15.0,
    ) -> None:
        self._device = device
        self._client = client
        self._ui_factory = ui_factory
        self._ui: UiDevice | None = None
        self._ui_lock = asyncio.Lock()
        self._ui_timeout = ui_timeout

    @property
    def serial(self) -> str:
        return str(self._device.serial)

    async def _call(self, what: str, fn: Callable[[], T], limit: float) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), limit)
        except TimeoutError as exc:
            await self._raise_if_gone(what)
            raise PhoneError(f"{what}: no answer from {self.serial} within {limit:g}s") from exc
        except PhoneError:
            raise
        except Exception as exc:
            await self._raise_if_gone(what)
            raise PhoneError(f"{what} on {self.serial} failed: {exc}") from exc

    async def _raise_if_gone(self, what: str) -> None:
        def state() -> str:
            for info in self._client.list():
                if info.serial == self.serial:
                    return str(info.state)
            return "absent"

        try:
            current = await asyncio.wait_for(asyncio.to_thread(state), 5.0)
        except Exception:
            current = "unknown (adb server not answering)"
        if current != "device":
            raise DeviceGoneError(f"{what}: device {self.serial} is {current}")

    async def _ui_device(self) -> UiDevice:
        async with self._ui_lock:
            if self._ui is None:
                self._ui = await self._call(
                    "start uiautomator2",
                    partial(self._ui_factory, self._device),
                    UI_CONNECT_TIMEOUT,
                )
            return self._ui

    async def push(self, local: Path, remote: str) -> None:
        await self._call(
            f"push {local.name}", partial(self._device.sync.push, str(local), remote), PUSH_TIMEOUT
        )

    async def shell(self, command: str) -> str:
        out: object = await self._call(
            f"shell {command.split(' ', 1)[0]}",
            partial(self._device.shell, command, timeout=SHELL_TIMEOUT),
            SHELL_TIMEOUT + 5,
        )
        return str(out)

    async def app_start(self, package: str) -> None:
        ui = await self._ui_device()
        await self._call(f"start {package}", partial(ui.app_start, package), 30.0)

    async def app_stop(self, package: str) -> None:
        ui = await self._ui_device()
        await self._call(f"stop {package}", partial(ui.app_stop, package), 30.0)

    def _find(self, ui: UiDevice, selectors: list[Selector], within: float) -> UiObject | None:
        # Several candidates per element: poll them together rather than wait on each.
        deadline = time.monotonic() + within
        while True:
            for selector in selectors:
                kwargs: dict[str, Any] = dict(selector)
                if "instance" in kwargs:
                    kwargs["instance"] = int(kwargs["instance"])
                obj = ui(**kwargs)
                if obj.exists:
                    return obj
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)

    async def tap(self, step: str, selectors: list[Selector], within: float) -> None:
        ui = await self._ui_device()

        def click() -> bool:
            obj = self._find(ui, selectors, within)
            if obj is None:
                return False
            obj.click(timeout=self._ui_timeout)
            return True

        if not await self._call(f"step {step!r}", click, within + self._ui_timeout):
            raise ElementMissingError(step, selectors, within)

    async def type_text(
        self, step: str, selectors: list[Selector], text: str, within: float
    ) -> None:
        ui = await self._ui_device()

        def type_in() -> bool:
            obj = self._find(ui, selectors, within)
            if obj is None:
                return False
            obj.set_text(text, timeout=self._ui_timeout)
            return True

        if not await self._call(f"step {step!r}", type_in, within + self._ui_timeout):
            raise ElementMissingError(step, selectors, within)

    async def present(self, selectors: list[Selector], within: float) -> bool:
        ui = await self._ui_device()
        found = await self._call(
            "look for element", partial(self._find, ui, selectors, within), within + 10
        )
        return found is not None

    async def screenshot(self, path: Path) -> Path | None:
        ui = await self._ui_device()
        await self._call("screenshot", partial(ui.screenshot, str(path)), 20.0)
        return path if await asyncio.to_thread(path.exists) else None

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # The custom-script API (`remote.RemotePhone`) ------------------------------------
    async def rpc(self, method: str, params: Any, within: float) -> Any:
        ui = await self._ui_device()

        def call() -> Any:
            from uiautomator2.exceptions import RPCError

            try:
                return ui.jsonrpc_call(method, params, within)
            except RPCError as exc:
                # The phone's uiautomator server refused this call: the caller's to fix.
                raise RemoteCallError(f"method: {method} failed on the phone: {exc}") from exc

        return await self._call(f"jsonrpc {method}", call, within + 5)

    async def hierarchy(self, within: float) -> str:
        ui = await self._ui_device()
        return str(await self._call("dump hierarchy", ui.dump_hierarchy, within))

    async def screenshot_png(self, within: float) -> bytes:
        def grab() -> bytes:
            out = io.BytesIO()
            self._device.screenshot().save(out, format="PNG")
            return out.getvalue()

        return await self._call("screenshot", grab, within)

    async def adb(self, args: list[str], within: float) -> str:
        words = shell_words(args)
        out: object = await self._call(
            f"adb shell {words[0]}",
            partial(self._device.shell, words, timeout=within),
            within + 5,
        )
        return str(out)


class AdbDriver:
    name = "adb"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ui_factory: UiFactory = connect_ui,
        ui_timeout: float = 15.0,
    ) -> None:
        self._host = host
        self._port = port
        self._client = AdbClient(host=host, port=port, socket_timeout=SHELL_TIMEOUT)
        self._ui_factory = ui_factory
        self._ui_timeout = ui_timeout
        self._phones: dict[str, AdbPhone] = {}
        self._listener: DeviceListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changes: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self._stopping = threading.Event()
        self._conn: AdbConnection | None = None
        self._conn_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._consumer: asyncio.Task[None] | None = None

    async def start(self, listener: DeviceListener) -> list[DeviceInfo]:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        initial: dict[str, str] = {}
        if server_answers(self._host, self._port):
            try:
                infos = await asyncio.wait_for(asyncio.to_thread(self._client.list), 10)
                initial = {i.serial: i.state for i in infos}
            except (AdbError, OSError, TimeoutError) as exc:
                log.warning("adb.list_failed", error=str(exc))
        devices = []
        for serial, state in sorted(initial.items()):
            if state == "device":
                devices.append(await self._attach(serial))
        self._thread = threading.Thread(target=self._track, name="adb-track", daemon=True)
        self._thread.start()
        self._consumer = asyncio.create_task(self._apply_changes(), name="adb-changes")
        return devices

    async def stop(self) -> None:
        self._stopping.set()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
        if self._consumer is not None:
            self._consumer.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    def phone(self, serial: str) -> AdbPhone | None:
        return self._phones.get(serial)

    async def accounts(self, serial: str) -> list[dict[str, str]]:
        phone = self._phones.get(serial)
        if phone is None:
            return []
        try:
            return parse_accounts(await phone.shell("dumpsys account"))
        except PhoneError as exc:
            log.warning("adb.accounts_failed", serial=serial, error=str(exc))
            return []

    async def _attach(self, serial: str) -> DeviceInfo:
        phone = AdbPhone(
            self._client.device(serial),
            client=self._client,
            ui_factory=self._ui_factory,
            ui_timeout=self._ui_timeout,
        )
        self._phones[serial] = phone
        return await self._read_info(phone)

    async def _read_info(self, phone: AdbPhone) -> DeviceInfo:
        async def prop(command: str) -> str | None:
            try:
                return (await phone.shell(command)).strip() or None
            except PhoneError as exc:
                log.warning("adb.info_failed", serial=phone.serial, command=command, error=str(exc))
                return None

        model = await prop("getprop ro.product.model")
        version = await prop("getprop ro.build.version.release")
        battery = await prop("dumpsys battery")
        return DeviceInfo(
            serial=phone.serial,
            model=model,
            android_version=version,
            battery=parse_battery(battery) if battery else None,
        )

    def _track(self) -> None:
        """Thread: follow track-devices, reconnecting when the adb server goes away."""
        while not self._stopping.is_set():
            if not server_answers(self._host, self._port):
                self._stopping.wait(1.0)
                continue
            try:
                conn = self._client.make_connection()
                with self._conn_lock:
                    if self._stopping.is_set():
                        conn.close()
                        return
                    self._conn = conn
                conn.send_command("host:track-devices")
                conn.check_okay()
                while not self._stopping.is_set():
                    states = parse_track_block(conn.read_string_block())
                    self._emit(states)
            except (AdbError, OSError, ValueError) as exc:
                if self._stopping.is_set():
                    return
                log.warning("adb.track_lost", error=str(exc))
                self._stopping.wait(1.0)
            finally:
                with self._conn_lock:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None

    def _emit(self, states: dict[str, str]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._changes.put_nowait, states)

    async def _apply_changes(self) -> None:
        while True:
            states = await self._changes.get()
            try:
                await self._apply(states)
            except Exception:
                log.exception("adb.change_failed")

    async def _apply(self, states: dict[str, str]) -> None:
        assert self._listener is not None
        online = {serial for serial, state in states.items() if state == "device"}
        for serial in sorted(set(self._phones) - online):
            reason = states.get(serial, "unplugged")
            log.info("adb.device_lost", serial=serial, state=states.get(serial, "absent"))
            await self._listener.device_disconnected(serial, reason)
            self._phones.pop(serial, None)
        for serial in sorted(online - set(self._phones)):
            log.info("adb.device_found", serial=serial)
            info = await self._attach(serial)
            await self._listener.device_connected(info)
