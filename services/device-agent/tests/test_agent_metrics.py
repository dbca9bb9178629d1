"""The agent's /metrics, scraped while simulated phones run `post` over real NATS: runs,
steps and failures move by exactly what the phones did, with bounded labels."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import Bus, eventually
from prometheus_client import generate_latest

from fleet_agent import metrics
from fleet_agent.app import Agent
from fleet_agent.settings import AgentSettings
from fleet_contracts.agent import RunTask, StopRun
from fleet_devstack import EmbeddedNats, free_port
from tests.scrape import Scrape, grew, moved, parse, scrape

AGENT = "metered"


def post(task_id: int, serial: str, *files: str, **config: Any) -> RunTask:
    return RunTask(
        task_id=task_id,
        dispatch_id=f"d{task_id}",
        serial=serial,
        script_name="post",
        script_config={"material_list": list(files), "upload_wait_time": 1, **config},
    )


async def test_runs_steps_and_failures_are_counted(nats_url: str, bus: Bus, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 1024)
    port = free_port()
    settings = AgentSettings(
        nats_url=nats_url,
        agent_id=AGENT,
        agent_host="rack-9",
        agent_driver="sim",
        agent_sim_devices=3,
        agent_sim_speed=0.01,
        agent_heartbeat_seconds=0.2,
        agent_screenshot_dir=tmp_path / "shots",
        agent_metrics_port=port,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    async with Agent(settings) as agent:
        assert agent.metrics is not None
        before = await scrape(url)
        assert before.value("fleet_agent_info", agent=AGENT, host="rack-9") == 1
        assert before.value("fleet_agent_devices") == 3

        # Two runs to the end, one that fails at the material check, one stopped.
        assert (await bus.run(AGENT, post(1, "device_serial_1", str(video)))).accepted
        assert (await bus.run(AGENT, post(2, "device_serial_2", str(video)))).accepted
        assert (await bus.run(AGENT, post(3, "device_serial_3", "/nowhere/x.mp4"))).accepted
        for task_id in (1, 2, 3):
            await bus.outcome(task_id)
        assert await bus.run(AGENT, post(4, "device_serial_1", str(video), upload_wait_time=600))
        await eventually(
            lambda: any(r.step == "wait for upload" for r in bus.of("task.progress", 4)),
            what="the upload wait",
        )
        during = await scrape(url)
        assert during.value("fleet_agent_runs_active") == 1
        assert during.value("fleet_agent_devices_busy") == 1
        await bus.stop(AGENT, StopRun(task_id=4, dispatch_id="d4"))
        assert (await bus.outcome(4)).stopped
        after = await scrape(url)

    runs = "fleet_agent_runs_total"
    assert grew(before, after, runs, script="post", outcome="completed") == 2
    assert grew(before, after, runs, script="post", outcome="failed") == 1
    assert grew(before, after, runs, script="post", outcome="stopped") == 1
    assert moved(before, after, "fleet_agent_run_seconds_count") == 4
    failures = "fleet_agent_step_failures_total"
    assert moved(before, after, failures) == 1, "a stop is not a failure"
    assert (
        grew(
            before, after, failures, script="post", step="check materials", reason="script_failure"
        )
        == 1
    )
    steps = "fleet_agent_step_seconds_count"
    assert grew(before, after, steps, script="post", step="check materials") == 4
    assert grew(before, after, steps, script="post", step="push media") == 3
    assert grew(before, after, steps, script="post", step="wait for upload") == 3
    assert after.value("fleet_agent_runs_active") == 0
    assert after.value("fleet_agent_devices_busy") == 0
    labels = {key for _, series in after for key, _ in series}
    assert not labels & {"serial", "task_id", "task", "dispatch_id"}


async def test_port_zero_serves_nothing_and_measures_nothing(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 1024)
    settings = AgentSettings(
        nats_url=nats_url,
        agent_id="quiet",
        agent_driver="sim",
        agent_sim_devices=1,
        agent_sim_speed=0,
        agent_screenshot_dir=tmp_path,
        agent_metrics_port=0,
    )
    before = parse(generate_latest(metrics.registry_for()).decode())
    async with Agent(settings) as agent:
        assert agent.metrics is None
        assert (await bus.run("quiet", post(21, "device_serial_1", str(video)))).accepted
        assert (await bus.outcome(21)).type == "task.completed"
    after = parse(generate_latest(metrics.registry_for()).decode())
    assert moved(before, after, "fleet_agent_runs_total") == 0
    assert moved(before, after, "fleet_agent_step_seconds_count") == 0


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("device disconnected", "device_disconnected"),
        ("agent stopping", "agent_stopping"),
        ("phone error: adb said no", "phone_error"),
        ("script 'post' crashed: KeyError: 'x'", "crashed"),
        ("script_config.upload_wait_time: must be >= 0", "bad_config"),
        ("material_list: /x.mp4 does not exist", "script_failure"),
    ],
)
def test_reason_classes_are_few_and_fixed(reason: str, expected: str) -> None:
    assert metrics.reason_class("post", reason) == expected


def test_step_names_past_the_cap_count_as_other() -> None:
    script = "chatty_plugin"
    names = [metrics.step_label(script, f"step {i}") for i in range(metrics.MAX_STEPS_PER_SCRIPT)]
    assert len(set(names)) == metrics.MAX_STEPS_PER_SCRIPT
    assert metrics.step_label(script, "one more") == metrics.OTHER_STEP
    assert metrics.step_label(script, "step 0") == "step 0"


def test_exported_names() -> None:
    names = metrics.exported()
    assert {"fleet_agent_runs_total", "fleet_agent_step_seconds_bucket"} <= names
    assert {"fleet_agent_devices", "fleet_nats_reconnects_total"} <= names


async def test_a_nats_restart_counts_one_reconnect(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    port = free_port()
    settings = AgentSettings(
        nats_url=nats_server.url,
        agent_id="reconnecting",
        agent_driver="sim",
        agent_sim_devices=1,
        agent_screenshot_dir=tmp_path,
        agent_metrics_port=port,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    async with Agent(settings):
        before = await scrape(url)
        await asyncio.to_thread(nats_server.restart)

        async def reconnected() -> Scrape | None:
            now = await scrape(url)
            return now if grew(before, now, "fleet_nats_reconnects_total") else None

        after = await eventually(reconnected, what="the agent's reconnect counted")
    assert grew(before, after, "fleet_nats_reconnects_total") == 1
    assert grew(before, after, "fleet_nats_disconnects_total") == 1
