"""The agent's test edges: a fake adb server, a fake uiautomator2 device, a report reader.

Imported by the tests as `agent_testkit` (conftest puts this folder on sys.path).

`FakeAdbServer` speaks the real adb host protocol on a local TCP port (adbutils is the
client, unmodified): host:version, host:devices(-l), host:track-devices, transports by
serial, shell:, and sync STAT/SEND. `FakeUi` is a scripted UI hierarchy answering the
uiautomator2 calls the flows make; it is the phone edge, where a fake belongs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from fleet_agent.phone import Selector
from fleet_agent.scripts.post_selectors import TIKTOK_34, AppTable
from fleet_contracts.agent import AgentReply, RunTask, StopRun, parse_reports
from fleet_contracts.subjects import agent_run_subject, agent_stop_subject

TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


async def eventually(
    probe: Callable[[], Any], *, within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `probe` (sync or async) until truthy; fail naming `what` after `within` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


# ---------------------------------------------------------------------------- adb
class FakeAdbServer:
    """An adb server holding in-memory phones: states, properties, files, a shell log."""

    VERSION = 41

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.models: dict[str, str] = {}
        self.accounts: dict[str, list[tuple[str, str]]] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self.shell_log: list[tuple[str, str]] = []
        self.commands: list[str] = []
        self._cond = threading.Condition()
        self._generation = 0
        self._closing = False
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError, EOFError):
                    _Session(fake, self.request).run()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def attach(
        self,
        serial: str,
        *,
        model: str = "Pixel 8",
        accounts: list[tuple[str, str]] | None = None,
        state: str = "device",
    ) -> None:
        with self._cond:
            self.states[serial] = state
            self.models[serial] = model
            self.accounts[serial] = accounts or []
            self._generation += 1
            self._cond.notify_all()

    def detach(self, serial: str) -> None:
        with self._cond:
            self.states.pop(serial, None)
            self._generation += 1
            self._cond.notify_all()

    def online(self, serial: str) -> bool:
        return self.states.get(serial) == "device"

    def files_under(self, serial: str, folder: str) -> dict[str, bytes]:
        return {p: b for (s, p), b in self.files.items() if s == serial and p.startswith(folder)}

    def shell(self, serial: str, command: str) -> str:
        self.shell_log.append((serial, command))
        if command == "getprop ro.product.model":
            return self.models.get(serial, "") + "\n"
        if command == "getprop ro.build.version.release":
            return "14\n"
        if command == "dumpsys battery":
            return "Current Battery Service state:\n  AC powered: false\n  level: 77\n"
        if command == "dumpsys account":
            lines = [
                f"    Account {{name={name}, type={kind}}}"
                for name, kind in self.accounts.get(serial, [])
            ]
            return f"Accounts: {len(lines)}\n" + "".join(line + "\n" for line in lines)
        argv = shlex.split(command)
        if argv[:2] == ["rm", "-rf"]:
            for folder in argv[2:]:
                for key in [k for k in self.files if k[0] == serial and k[1].startswith(folder)]:
                    del self.files[key]
        return ""

    def device_block(self, long: bool = False) -> str:
        lines = []
        for serial, state in sorted(self.states.items()):
            extra = (
                f" product:p model:{self.models.get(serial, 'x')} transport_id:1" if long else ""
            )
            lines.append(f"{serial}\t{state}{extra}" if not long else f"{serial} {state}{extra}")
        return "".join(line + "\n" for line in lines)

    def track(self, send: Callable[[str], None]) -> None:
        seen = -1
        while True:
            with self._cond:
                while self._generation == seen and not self._closing:
                    self._cond.wait(0.2)
                if self._closing:
                    return
                seen = self._generation
                block = self.device_block()
            send(block)


class _Session:
    """One client connection: host services, then maybe a transport to one phone."""

    def __init__(self, fake: FakeAdbServer, sock: Any) -> None:
        self.fake = fake
        self.sock = sock
        self.serial: str | None = None

    def read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def okay(self) -> None:
        self.sock.sendall(b"OKAY")

    def block(self, text: str) -> None:
        raw = text.encode()
        self.sock.sendall(f"{len(raw):04x}".encode() + raw)

    def fail(self, text: str) -> None:
        self.sock.sendall(b"FAIL")
        self.block(text)

    def run(self) -> None:
        while True:
            size = int(self.read(4), 16)
            command = self.read(size).decode()
            self.fake.commands.append(command)
            if not self.dispatch(command):
                return

    def dispatch(self, command: str) -> bool:
        """Answer one request; True when the connection carries on (after a transport)."""
        fake = self.fake
        if command == "host:version":
            self.okay()
            self.block(f"{fake.VERSION:04x}")
        elif command in ("host:devices", "host:devices-l"):
            self.okay()
            self.block(fake.device_block(long=command.endswith("-l")))
        elif command == "host:track-devices":
            self.okay()
            fake.track(self.block)
        elif command.startswith(("host:tport:serial:", "host:transport:")):
            serial = command.split(":", 2)[2].removeprefix("serial:")
            if not fake.online(serial):
                self.fail(f"device '{serial}' not found")
                return False
            self.okay()
            if command.startswith("host:tport:"):
                self.sock.sendall(struct.pack("<Q", 1))
            self.serial = serial
            return True
        elif command.startswith("host-serial:"):
            serial, _, service = command.removeprefix("host-serial:").rpartition(":")
            if not fake.online(serial):
                self.fail(f"device '{serial}' not found")
            elif service == "get-state":
                self.okay()
                self.block(fake.states[serial])
            else:
                self.fail(f"unsupported {service}")
        elif command.startswith("shell:") and self.serial is not None:
            if not fake.online(self.serial):
                self.fail("device offline")
                return False
            self.okay()
            self.sock.sendall(fake.shell(self.serial, command.removeprefix("shell:")).encode())
        elif command == "sync:" and self.serial is not None:
            self.okay()
            self.sync(self.serial)
        else:
            self.fail(f"unknown command {command}")
        return False

    def sync(self, serial: str) -> None:
        fake = self.fake
        while True:
            request = self.read(4)
            length = struct.unpack("<I", self.read(4))[0]
            if request == b"QUIT":
                return
            arg = self.read(length).decode()
            if request == b"STAT":
                data = fake.files.get((serial, arg))
                if data is not None:
                    reply = (stat.S_IFREG | 0o644, len(data), int(time.time()))
                elif any(
                    s == serial and p.startswith(arg.rstrip("/") + "/") for s, p in fake.files
                ):
                    reply = (stat.S_IFDIR | 0o755, 0, int(time.time()))
                else:
                    reply = (0, 0, 0)
                self.sock.sendall(b"STAT" + struct.pack("<III", *reply))
            elif request == b"SEND":
                path = arg.rsplit(",", 1)[0]
                body = b""
                while True:
                    kind = self.read(4)
                    size = struct.unpack("<I", self.read(4))[0]
                    if kind == b"DONE":
                        break
                    body += self.read(size)
                if not fake.online(serial):
                    self.sock.sendall(b"FAIL" + struct.pack("<I", 7) + b"offline")
                    return
                fake.files[(serial, path)] = body
                self.sock.sendall(b"OKAY" + struct.pack("<I", 0))
            else:
                return


# ---------------------------------------------------------------------------- ui
def _matches(element: Selector, query: dict[str, Any]) -> bool:
    wanted = {k: v for k, v in query.items() if k != "instance"}
    return dict(element) == wanted


class FakeUiObject:
    def __init__(self, ui: FakeUi, query: dict[str, Any]) -> None:
        self._ui = ui
        self._query = query

    def _element(self) -> tuple[str, Selector, str | None] | None:
        self._ui.check_online()
        for name, selector, target in self._ui.screens[self._ui.screen]:
            if _matches(selector, self._query):
                return name, selector, target
        return None

    @property
    def exists(self) -> bool:
        return self._element() is not None

    def click(self, timeout: float | None = None) -> None:
        found = self._element()
        assert found is not None, f"click on absent {self._query}"
        name, _, target = found
        self._ui.clicked.append(name)
        hook = self._ui.on_click.get(name)
        if hook is not None:
            hook()
        if target is not None:
            self._ui.screen = target

    def set_text(self, text: str, timeout: float | None = None) -> None:
        found = self._element()
        assert found is not None, f"set_text on absent {self._query}"
        self._ui.typed.append((found[0], text))


class FakeUi:
    """A scripted hierarchy: screens of (element name, selector, screen after a click)."""

    def __init__(
        self,
        screens: dict[str, list[tuple[str, Selector, str | None]]],
        *,
        adb: FakeAdbServer,
        serial: str,
        start: str = "launcher",
    ) -> None:
        self.screens = screens
        self.screen = start
        self.adb = adb
        self.serial = serial
        self.clicked: list[str] = []
        self.typed: list[tuple[str, str]] = []
        self.started: list[str] = []
        self.on_click: dict[str, Callable[[], object]] = {}

    def check_online(self) -> None:
        if not self.adb.online(self.serial):
            raise ConnectionError(f"uiautomator2 server on {self.serial} unreachable")

    def __call__(self, **selector: Any) -> FakeUiObject:
        return FakeUiObject(self, selector)

    def app_start(self, package_name: str) -> None:
        self.check_online()
        self.started.append(package_name)
        self.screen = "home"

    def app_stop(self, package_name: str) -> None:
        self.check_online()

    def screenshot(self, filename: str) -> None:
        self.check_online()
        Path(filename).write_bytes(TINY_PNG)

    def dump_hierarchy(self) -> str:
        self.check_online()
        nodes = "".join(
            f'<node resource-id="{dict(sel).get("resourceId", "")}" text="{name}" />'
            for name, sel, _ in self.screens[self.screen]
        )
        return f'<?xml version="1.0" ?><hierarchy screen="{self.screen}">{nodes}</hierarchy>'


def tiktok_screens(
    table: AppTable = TIKTOK_34,
) -> dict[str, list[tuple[str, Selector, str | None]]]:
    """TikTok's in-app upload path, each element under its table's first selector."""

    def el(name: str, target: str | None) -> tuple[str, Selector, str | None]:
        return (name, table.elements[name][0], target)

    return {
        "launcher": [],
        "home": [el("create", "camera")],
        "camera": [el("upload", "gallery")],
        "gallery": [el("first_media", "picked")],
        "picked": [el("next", "editor")],
        "editor": [el("next", "describe")],
        "describe": [el("caption", None), el("post", "posted")],
        "posted": [],
    }


# ---------------------------------------------------------------------------- bus
class Bus:
    """The scheduler's side of the agent protocol: requests out, REPORTS in."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self.reports: list[Any] = []
        self.messages: list[list[Any]] = []
        """The reports of each REPORTS message, one entry per message."""

    async def listen(self) -> None:
        async def on_report(msg: Any) -> None:
            carried = parse_reports(msg.data)
            self.messages.append(carried)
            self.reports.extend(carried)
            await msg.ack()

        await self.js.subscribe("report.>", cb=on_report, manual_ack=True)

    async def run(self, agent_id: str, request: RunTask) -> AgentReply:
        resp = await self.nc.request(agent_run_subject(agent_id), request.to_bytes(), timeout=5)
        return AgentReply.model_validate_json(resp.data)

    async def stop(self, agent_id: str, request: StopRun) -> AgentReply:
        resp = await self.nc.request(agent_stop_subject(agent_id), request.to_bytes(), timeout=5)
        return AgentReply.model_validate_json(resp.data)

    def of(self, kind: str, task_id: int | None = None) -> list[Any]:
        return [
            r
            for r in self.reports
            if r.type == kind and (task_id is None or getattr(r, "task_id", None) == task_id)
        ]

    def for_task(self, task_id: int) -> list[Any]:
        return [r for r in self.reports if getattr(r, "task_id", None) == task_id]

    async def outcome(self, task_id: int, within: float = 10.0) -> Any:
        """The completed / failed report of the task, once it arrives."""

        def done() -> Any:
            ends = [
                r for r in self.for_task(task_id) if r.type in ("task.completed", "task.failed")
            ]
            return ends[0] if ends else None

        return await eventually(done, within=within, what=f"outcome of task {task_id}")
