"""The `post` flow on a "real" phone: the adb driver over the fake adb server, the UI
through a fake uiautomator2 device with a scripted hierarchy, run through NATS."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from adbutils import AdbDevice
from agent_testkit import Bus, FakeAdbServer, FakeUi, eventually, tiktok_screens

from fleet_agent.adb import AdbDriver
from fleet_agent.app import Agent
from fleet_agent.scripts import ScriptHost
from fleet_agent.scripts.post import PostScript
from fleet_agent.scripts.post_selectors import TIKTOK_PACKAGE
from fleet_agent.settings import AgentSettings
from fleet_contracts.agent import RunTask, StopRun

AGENT = "rack-7"
SERIAL = "R58M123"
REMOTE = "/sdcard/DCIM/fleet"
CLIP = b"\x01\x02" * 3000


@dataclass
class Rig:
    agent: Agent
    adb: FakeAdbServer
    uis: dict[str, FakeUi]
    bus: Bus
    shots: Path
    hooks: dict[str, Callable[[], object]]

    def ui(self) -> FakeUi:
        return self.uis[SERIAL]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(CLIP)
    return path


@pytest.fixture
def screens() -> dict[str, list[Any]]:
    return tiktok_screens()


@pytest.fixture
async def rig(
    nats_url: str, tmp_path: Path, fake_adb: FakeAdbServer, bus: Bus, screens: dict[str, Any]
) -> AsyncIterator[Rig]:
    fake_adb.attach(SERIAL, accounts=[("alice", "com.zhiliaoapp.musically")])
    uis: dict[str, FakeUi] = {}
    hooks: dict[str, Callable[[], object]] = {}

    def ui_factory(device: AdbDevice) -> FakeUi:
        serial = str(device.serial)
        uis[serial] = FakeUi(screens, adb=fake_adb, serial=serial)
        uis[serial].on_click = hooks
        return uis[serial]

    settings = AgentSettings(
        nats_url=nats_url,
        agent_id=AGENT,
        agent_heartbeat_seconds=0.5,
        agent_screenshot_dir=tmp_path / "shots",
    )
    host = ScriptHost(agent_id=AGENT, ui_timeout=1.0, optional_wait=0.05)
    driver = AdbDriver("127.0.0.1", fake_adb.port, ui_factory=ui_factory, ui_timeout=1.0)
    async with Agent(settings, driver=driver, scripts={"post": PostScript(host)}) as agent:
        yield Rig(agent, fake_adb, uis, bus, tmp_path / "shots", hooks)


def post(task_id: int, video: Path, **config: Any) -> RunTask:
    return RunTask(
        task_id=task_id,
        dispatch_id=f"d{task_id}",
        serial=SERIAL,
        username="alice",
        script_name="post",
        script_config={
            "material_list": [str(video)],
            "post_way": "addButton",
            "upload_wait_time": 0,
            **config,
        },
    )


async def test_post_walks_the_flow_and_cleans_up(rig: Rig, video: Path) -> None:
    seen_on_phone: dict[str, bytes] = {}
    rig.hooks["post"] = lambda: seen_on_phone.update(rig.adb.files_under(SERIAL, f"{REMOTE}/1"))
    started = await rig.bus.run(AGENT, post(1, video, captions="sunset #fleet"))
    assert started.accepted, started.reason

    done = await rig.bus.outcome(1)
    assert done.type == "task.completed", getattr(done, "reason", "")
    ui = rig.ui()
    assert ui.started == [TIKTOK_PACKAGE]
    assert ui.clicked == ["create", "upload", "first_media", "next", "next", "post"]
    assert ui.typed == [("caption", "sunset #fleet")]
    # The media was on the phone when the post button was pressed, and is gone now.
    assert seen_on_phone == {f"{REMOTE}/1/0_clip.mp4": CLIP}
    assert not rig.adb.files_under(SERIAL, REMOTE)
    commands = [c for s, c in rig.adb.shell_log if s == SERIAL]
    assert (
        f"am broadcast -a android.intent.action.MEDIA_SCANNER_SCAN_FILE "
        f"-d file://{REMOTE}/1/0_clip.mp4"
    ) in commands
    assert commands[-1] == f"rm -rf {REMOTE}/1"
    steps = [r.step for r in rig.bus.of("task.progress", 1)]
    # Throttled: the first step goes out at once, later ones at most every half second.
    assert steps[0] == "check materials"
    assert len(steps) == len(set(steps))


async def test_missing_selector_fails_naming_the_step_with_a_screenshot(
    rig: Rig, video: Path, screens: dict[str, Any]
) -> None:
    screens["describe"] = [e for e in screens["describe"] if e[0] != "post"]
    await rig.bus.run(AGENT, post(2, video, captions="x"))

    failed = await rig.bus.outcome(2)
    assert failed.type == "task.failed"
    assert "post step 'post' failed" in failed.reason
    assert "text='Post'" in failed.reason
    assert "selector table tiktok 34.x" in failed.reason
    assert failed.screenshot is not None
    assert Path(failed.screenshot).parent == rig.shots
    shot = await asyncio.to_thread(Path(failed.screenshot).read_bytes)
    assert shot.startswith(b"\x89PNG")
    assert not rig.adb.files_under(SERIAL, REMOTE)


async def test_stop_while_a_ui_call_hangs_ends_promptly_and_cleans_up(
    rig: Rig, video: Path
) -> None:
    release = threading.Event()
    # The phone stops answering inside the upload click (a hung uiautomator2 call).
    rig.hooks["upload"] = lambda: release.wait(20)
    await rig.bus.run(AGENT, post(3, video))
    try:
        await eventually(
            lambda: SERIAL in rig.uis and "upload" in rig.ui().clicked, what="the upload click"
        )
        assert rig.adb.files_under(SERIAL, f"{REMOTE}/3")

        asked = time.monotonic()
        assert (await rig.bus.stop(AGENT, StopRun(task_id=3, dispatch_id="d3"))).accepted
        failed = await rig.bus.outcome(3, within=5)
        assert time.monotonic() - asked < 5
        assert (failed.reason, failed.stopped) == ("stopped", True)
        assert failed.screenshot is None
        assert not rig.adb.files_under(SERIAL, REMOTE)
        assert rig.agent.runner.status(SERIAL).busy is False
    finally:
        release.set()


async def test_phone_going_offline_mid_flow_fails_with_device_disconnected(
    rig: Rig, video: Path
) -> None:
    rig.hooks["create"] = lambda: rig.adb.detach(SERIAL)
    await rig.bus.run(AGENT, post(4, video))

    failed = await rig.bus.outcome(4)
    assert failed.reason == "device disconnected"
    assert failed.stopped is False
    gone = await eventually(lambda: rig.bus.of("device.disconnected"), what="disconnect")
    assert gone[0].serial == SERIAL
    assert rig.bus.reports.index(failed) < rig.bus.reports.index(gone[0])
