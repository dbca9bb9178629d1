"""Discovery, shell and push over the real adb host protocol (fake server, real adbutils)."""

from __future__ import annotations

import socket
from pathlib import Path

from adbutils import AdbClient
from agent_testkit import FakeAdbServer, eventually

from fleet_agent.adb import AdbDriver, adb_has_devices, parse_accounts
from fleet_agent.app import choose_driver
from fleet_agent.settings import AgentSettings
from fleet_agent.sim import SimDriver
from fleet_contracts.agent import DeviceInfo


class Seen:
    """Records what the driver tells the agent."""

    def __init__(self) -> None:
        self.connected: list[DeviceInfo] = []
        self.disconnected: list[tuple[str, str]] = []

    async def device_connected(self, info: DeviceInfo) -> None:
        self.connected.append(info)

    async def device_disconnected(self, serial: str, reason: str) -> None:
        self.disconnected.append((serial, reason))


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_auto_detection_needs_a_server_with_a_phone(fake_adb: FakeAdbServer) -> None:
    assert not adb_has_devices("127.0.0.1", unused_port())
    assert not adb_has_devices("127.0.0.1", fake_adb.port)
    fake_adb.attach("R58M123", state="unauthorized")
    assert not adb_has_devices("127.0.0.1", fake_adb.port)
    fake_adb.attach("emulator-5554")
    assert adb_has_devices("127.0.0.1", fake_adb.port)


async def test_devices_appear_and_disappear(fake_adb: FakeAdbServer) -> None:
    fake_adb.attach("R58M123", model="SM-A525F")
    seen = Seen()
    driver = AdbDriver("127.0.0.1", fake_adb.port)
    initial = await driver.start(seen)
    try:
        assert initial == [
            DeviceInfo(serial="R58M123", model="SM-A525F", android_version="14", battery=77)
        ]
        fake_adb.attach("192.168.1.5:5555", model="Pixel 6")
        await eventually(lambda: seen.connected, what="the second phone")
        assert seen.connected[0].serial == "192.168.1.5:5555"
        assert seen.connected[0].model == "Pixel 6"
        assert driver.phone("192.168.1.5:5555") is not None

        fake_adb.detach("R58M123")
        await eventually(lambda: seen.disconnected, what="the unplug")
        assert seen.disconnected == [("R58M123", "unplugged")]
        assert driver.phone("R58M123") is None

        fake_adb.attach("192.168.1.5:5555", state="offline")
        await eventually(lambda: len(seen.disconnected) == 2, what="the phone going offline")
        assert seen.disconnected[1] == ("192.168.1.5:5555", "offline")
    finally:
        await driver.stop()
    # Discovery follows the pushed stream; it does not poll the device list.
    assert fake_adb.commands.count("host:track-devices") == 1
    assert fake_adb.commands.count("host:devices") == 1


async def test_shell_and_push_land_on_the_phone(fake_adb: FakeAdbServer, tmp_path: Path) -> None:
    fake_adb.attach(
        "R58M123",
        accounts=[("alice", "com.zhiliaoapp.musically"), ("bob", "com.google")],
    )
    driver = AdbDriver("127.0.0.1", fake_adb.port)
    await driver.start(Seen())
    try:
        phone = driver.phone("R58M123")
        assert phone is not None
        payload = bytes(range(256)) * 100  # several sync DATA chunks
        local = tmp_path / "clip.mp4"
        local.write_bytes(payload)
        await phone.push(local, "/sdcard/DCIM/fleet/1/0_clip.mp4")
        assert fake_adb.files[("R58M123", "/sdcard/DCIM/fleet/1/0_clip.mp4")] == payload

        assert (await phone.shell("getprop ro.build.version.release")).strip() == "14"
        await phone.shell("rm -rf /sdcard/DCIM/fleet/1")
        assert not fake_adb.files_under("R58M123", "/sdcard/DCIM/fleet/1")

        assert await driver.accounts("R58M123") == [{"username": "alice", "platform": "tiktok"}]
    finally:
        await driver.stop()


def test_fake_server_speaks_what_adbutils_expects(fake_adb: FakeAdbServer) -> None:
    fake_adb.attach("R58M123")
    client = AdbClient(host="127.0.0.1", port=fake_adb.port)
    assert client.server_version() == 41
    assert [(i.serial, i.state) for i in client.list(extended=True)] == [("R58M123", "device")]
    assert client.device("R58M123").shell("getprop ro.product.model") == "Pixel 8"


def test_accounts_parse_known_platforms_only() -> None:
    dump = (
        "Accounts: 3\n"
        "    Account {name=alice, type=com.zhiliaoapp.musically}\n"
        "    Account {name=ig.bob, type=com.instagram.android}\n"
        "    Account {name=me@example.com, type=com.google}\n"
    )
    assert parse_accounts(dump) == [
        {"username": "alice", "platform": "tiktok"},
        {"username": "ig.bob", "platform": "instagram"},
    ]


def test_auto_driver_uses_adb_only_when_a_phone_is_there(fake_adb: FakeAdbServer) -> None:
    settings = AgentSettings(agent_driver="auto", agent_adb_address=f"127.0.0.1:{fake_adb.port}")
    assert isinstance(choose_driver(settings), SimDriver)
    fake_adb.attach("R58M123")
    assert isinstance(choose_driver(settings), AdbDriver)
    dead = AgentSettings(agent_driver="auto", agent_adb_address=f"127.0.0.1:{unused_port()}")
    assert isinstance(choose_driver(dead), SimDriver)
