"""The simulated fleet through real NATS, seen as the scheduler sees it: run and stop
requests answered, REPORTS read, heartbeats heard."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from agent_testkit import Bus, eventually
from pydantic import BaseModel, ConfigDict, Field

from fleet_agent.app import Agent, sim_control_subject
from fleet_agent.runs import STEP_LINGER
from fleet_agent.scripts import CancelToken, Progress, Target
from fleet_agent.scripts.post import PostScript
from fleet_agent.settings import AgentSettings
from fleet_contracts.agent import AgentReply, Heartbeat, RunTask, StopRun
from fleet_contracts.scripts import ScriptSpec
from fleet_contracts.subjects import KV_SCRIPTS, heartbeat_subject

AGENT = "host-1"


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "media" / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(b"\x00" * 2048)
    return path


@pytest.fixture
def settings_for(nats_url: str, tmp_path: Path) -> Callable[..., AgentSettings]:
    def make(**overrides: Any) -> AgentSettings:
        values: dict[str, Any] = {
            "nats_url": nats_url,
            "agent_id": AGENT,
            "agent_host": "rack-1",
            "agent_driver": "sim",
            "agent_sim_devices": 3,
            "agent_sim_speed": 0.01,
            "agent_heartbeat_seconds": 0.2,
            "agent_screenshot_dir": tmp_path / "shots",
        }
        values.update(overrides)
        return AgentSettings(**values)

    return make


@pytest.fixture
async def agent(settings_for: Callable[..., AgentSettings], bus: Bus) -> AsyncIterator[Agent]:
    async with Agent(settings_for()) as running:
        yield running


def post(task_id: int, serial: str, video: Path, **config: Any) -> RunTask:
    return RunTask(
        task_id=task_id,
        dispatch_id=f"d{task_id}",
        serial=serial,
        script_name="post",
        script_config={"material_list": [str(video)], "upload_wait_time": 1, **config},
    )


async def test_run_reports_started_progress_completed(agent: Agent, bus: Bus, video: Path) -> None:
    # 100 s of upload wait at speed 0.01: a run of about a second, longer than a step lingers.
    request = post(1, "device_serial_1", video, captions="hello #fleet", upload_wait_time=100)
    reply = await bus.run(AGENT, request)
    assert reply.accepted, reply.reason

    done = await bus.outcome(1)
    assert done.type == "task.completed"
    kinds = [r.type for r in bus.for_task(1)]
    assert kinds[0] == "task.started"
    assert kinds[-1] == "task.completed"
    steps = [r.step for r in bus.of("task.progress", 1)]
    # Progress is throttled (latest step wins, see test_agent_progress): the first step
    # always shows, and no step is reported twice.
    assert steps[0] == "check materials"
    assert len(steps) == len(set(steps))
    assert all(r.correlation_id == request.correlation_id for r in bus.for_task(1))
    assert done.result["files"] == [str(video)]


async def test_a_run_ending_at_once_reports_no_step(agent: Agent, bus: Bus, video: Path) -> None:
    # No upload wait: the run ends well within STEP_LINGER, and its outcome says it all.
    request = post(4, "device_serial_3", video, upload_wait_time=0)
    assert (await bus.run(AGENT, request)).accepted
    assert (await bus.outcome(4)).type == "task.completed"
    await asyncio.sleep(STEP_LINGER * 2)
    assert [r.type for r in bus.for_task(4)] == ["task.started", "task.completed"]


async def test_missing_material_fails_naming_the_path(
    agent: Agent, bus: Bus, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "gone.mp4"
    reply = await bus.run(AGENT, post(2, "device_serial_2", missing))
    assert reply.accepted

    failed = await bus.outcome(2)
    assert failed.type == "task.failed"
    assert str(missing) in failed.reason
    assert "is not a readable file" in failed.reason
    assert failed.stopped is False
    assert not bus.of("task.progress", 2)[1:], "nothing after the material check"


async def test_bad_config_fails_naming_the_field(agent: Agent, bus: Bus, video: Path) -> None:
    reply = await bus.run(AGENT, post(3, "device_serial_1", video, upload_wait_time=-5))
    assert reply.accepted
    failed = await bus.outcome(3)
    assert failed.type == "task.failed"
    assert "script_config.upload_wait_time" in failed.reason


async def test_stop_mid_run_ends_promptly_as_stopped(agent: Agent, bus: Bus, video: Path) -> None:
    # 10 minutes of upload wait at speed 0.01 is 6 s: far longer than a prompt stop.
    await bus.run(AGENT, post(4, "device_serial_1", video, upload_wait_time=600))
    await eventually(
        lambda: any(r.step == "wait for upload" for r in bus.of("task.progress", 4)),
        what="the upload wait",
    )
    # The phone is busy meanwhile.
    busy = await bus.run(AGENT, post(5, "device_serial_1", video))
    assert busy == AgentReply(accepted=False, reason="device busy with task 4")

    asked = time.monotonic()
    reply = await bus.stop(AGENT, StopRun(task_id=4, dispatch_id="d4"))
    assert reply.accepted
    failed = await bus.outcome(4, within=3)
    assert time.monotonic() - asked < 3
    assert failed.type == "task.failed"
    assert failed.reason == "stopped"
    assert failed.stopped is True

    # Free again once the stopped script has ended.
    again = await bus.run(AGENT, post(6, "device_serial_1", video))
    assert again.accepted, again.reason
    assert (await bus.outcome(6)).type == "task.completed"


async def test_stop_of_a_task_not_running_is_a_no_op(agent: Agent, bus: Bus) -> None:
    reply = await bus.stop(AGENT, StopRun(task_id=999))
    assert reply.accepted
    assert "not running" in reply.reason


async def test_unplug_mid_run_fails_with_device_disconnected(
    agent: Agent, bus: Bus, video: Path
) -> None:
    await bus.run(AGENT, post(7, "device_serial_2", video, upload_wait_time=600))
    await eventually(lambda: bus.of("task.progress", 7), what="progress")
    resp = await bus.nc.request(
        sim_control_subject(AGENT, "unplug"), json.dumps({"serial": "device_serial_2"}).encode(), 5
    )
    assert AgentReply.model_validate_json(resp.data).accepted

    failed = await bus.outcome(7, within=3)
    assert failed.reason == "device disconnected"
    assert failed.stopped is False
    gone = await eventually(lambda: bus.of("device.disconnected"), what="disconnect report")
    assert gone[0].serial == "device_serial_2"
    assert bus.reports.index(failed) < bus.reports.index(gone[0])

    refused = await bus.run(AGENT, post(8, "device_serial_2", video))
    assert refused == AgentReply(
        accepted=False, reason=f"device device_serial_2 is not attached to agent {AGENT}"
    )

    await bus.nc.request(
        sim_control_subject(AGENT, "plug"), json.dumps({"serial": "device_serial_2"}).encode(), 5
    )
    back = await eventually(lambda: bus.of("device.connected"), what="reconnect report")
    assert back[0].device.serial == "device_serial_2"
    assert (await bus.run(AGENT, post(9, "device_serial_2", video))).accepted


async def test_duplicate_run_is_ignored(agent: Agent, bus: Bus, video: Path) -> None:
    request = post(10, "device_serial_3", video, upload_wait_time=100)
    first = await bus.run(AGENT, request)
    again = await bus.run(AGENT, request.model_copy(update={"message_id": "retry"}))
    assert first.accepted
    assert again.accepted
    await bus.outcome(10)
    assert len(bus.of("task.started", 10)) == 1
    assert len(bus.of("task.completed", 10)) == 1


async def test_a_run_sent_again_after_it_ended_is_not_run_twice(
    agent: Agent, bus: Bus, video: Path
) -> None:
    request = post(16, "device_serial_3", video)
    assert (await bus.run(AGENT, request)).accepted
    await bus.outcome(16)
    # The scheduler had not heard of the start yet and sent the same dispatch again.
    again = await bus.run(AGENT, request.model_copy(update={"message_id": "resent"}))
    assert again == AgentReply(accepted=True, reason="already ran")
    await asyncio.sleep(0.5)
    assert len(bus.of("task.started", 16)) == 1
    assert len(bus.of("task.completed", 16)) == 1
    # A new dispatch of the same task (a retry) runs.
    retry = request.model_copy(update={"dispatch_id": "d16-retry", "message_id": "m2"})
    assert (await bus.run(AGENT, retry)).accepted
    await eventually(lambda: len(bus.of("task.completed", 16)) == 2, what="the retry ran")


async def test_refusals_say_what_to_fix(agent: Agent, bus: Bus, video: Path) -> None:
    unknown_device = await bus.run(AGENT, post(11, "device_serial_9", video))
    assert unknown_device == AgentReply(
        accepted=False, reason=f"device device_serial_9 is not attached to agent {AGENT}"
    )
    unknown_script = await bus.run(
        AGENT, post(12, "device_serial_1", video).model_copy(update={"script_name": "x"})
    )
    assert unknown_script == AgentReply(
        accepted=False, reason=f"script 'x' not installed on agent {AGENT}"
    )
    assert not bus.for_task(11)
    assert not bus.for_task(12)


async def test_a_batch_of_runs_is_answered_run_by_run(agent: Agent, bus: Bus, video: Path) -> None:
    from fleet_contracts.agent import RunBatch, RunBatchReply
    from fleet_contracts.subjects import agent_runs_subject

    batch = RunBatch(
        runs=[
            post(13, "device_serial_1", video),
            post(14, "device_serial_9", video),
            post(15, "device_serial_2", video),
        ]
    )
    resp = await bus.nc.request(agent_runs_subject(AGENT), batch.to_bytes(), timeout=5)
    replies = RunBatchReply.model_validate_json(resp.data).replies
    assert [r.accepted for r in replies] == [True, False, True]
    assert replies[1].reason == f"device device_serial_9 is not attached to agent {AGENT}"
    assert (await bus.outcome(13)).type == "task.completed"
    assert (await bus.outcome(15)).type == "task.completed"
    assert not bus.for_task(14)


async def test_reports_of_a_batch_of_runs_travel_together(
    agent: Agent, bus: Bus, video: Path
) -> None:
    from fleet_contracts.agent import RunBatch
    from fleet_contracts.subjects import agent_runs_subject

    serials = ["device_serial_1", "device_serial_2", "device_serial_3"]
    batch = RunBatch(runs=[post(20 + n, s, video) for n, s in enumerate(serials)])
    await bus.nc.request(agent_runs_subject(AGENT), batch.to_bytes(), timeout=5)
    for n in range(3):
        assert (await bus.outcome(20 + n)).type == "task.completed"
    ours = [m for m in bus.messages if any(getattr(r, "task_id", 0) >= 20 for r in m)]
    assert len(ours) < len([r for m in ours for r in m]), "every report went alone"
    starts = [sorted(r.task_id for r in m if r.type == "task.started") for m in ours]
    assert [20, 21, 22] in starts, "the three starts were made together but sent apart"
    for n in range(3):  # each task's own reports in the order they happened
        kinds = [r.type for r in bus.for_task(20 + n)]
        assert kinds[0] == "task.started" and kinds[-1] == "task.completed"


async def test_heartbeats_carry_busy_state(agent: Agent, bus: Bus, video: Path) -> None:
    beats: list[Heartbeat] = []

    async def on_beat(msg: Any) -> None:
        beats.append(Heartbeat.from_bytes(msg.data))

    await bus.nc.subscribe(heartbeat_subject(AGENT), cb=on_beat)
    await bus.run(AGENT, post(13, "device_serial_1", video, upload_wait_time=300))

    def busy_beat() -> Heartbeat | None:
        for beat in beats:
            status = {d.serial: d for d in beat.devices}
            if status["device_serial_1"].busy and status["device_serial_1"].task_id == 13:
                return beat
        return None

    beat = await eventually(busy_beat, what="a heartbeat showing the busy phone")
    assert beat.host == "rack-1" and beat.incarnation == agent.incarnation
    assert {d.serial: d for d in beat.devices}["device_serial_1"].dispatch_id == "d13"
    others = [d for d in beat.devices if d.serial != "device_serial_1"]
    assert others
    assert not any(d.busy for d in others)

    await bus.stop(AGENT, StopRun(task_id=13))
    await bus.outcome(13)
    seen = len(beats)
    await eventually(lambda: len(beats) > seen, what="a heartbeat after the stop")
    last = {d.serial: d for d in beats[-1].devices}
    assert not last["device_serial_1"].busy


async def test_restart_reannounces_and_stopping_fails_running_tasks(
    settings_for: Callable[..., AgentSettings], bus: Bus, video: Path
) -> None:
    async with Agent(settings_for()):
        await bus.run(AGENT, post(14, "device_serial_1", video, upload_wait_time=600))
        await eventually(lambda: bus.of("task.progress", 14), what="progress")
    failed = await bus.outcome(14)
    assert failed.reason == "agent stopping"

    async with Agent(settings_for()):
        starts = await eventually(
            lambda: len(bus.of("agent.started")) == 2 and bus.of("agent.started"),
            what="a second agent.started",
        )
    for start in starts:
        assert start.host == "rack-1"
        assert [d.serial for d in start.devices] == [f"device_serial_{n}" for n in (1, 2, 3)]
        assert [s.name for s in start.scripts] == ["post"]
    accounts = {r.serial: r.accounts for r in bus.of("device.accounts")}
    assert accounts["device_serial_2"] == [
        {"username": "sim_2_a", "platform": "tiktok"},
        {"username": "sim_2_b", "platform": "tiktok"},
    ]


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    words: list[str] = Field(min_length=1)


class EchoScript:
    """A plugin as a user would write one."""

    name: ClassVar[str] = "echo"
    description: ClassVar[str] = "Say the words back."
    config_model: ClassVar[type[BaseModel]] = EchoConfig

    async def run(
        self, target: Target, config: Any, progress: Progress, cancel: CancelToken
    ) -> dict[str, Any]:
        await progress("echo", 50, " ".join(config.words))
        await target.phone.shell("echo " + " ".join(config.words))
        return {"said": config.words, "serial": target.phone.serial}


async def test_plugin_script_is_published_and_runs(
    settings_for: Callable[..., AgentSettings], bus: Bus
) -> None:
    from fleet_agent.scripts import ScriptHost

    scripts = {"post": PostScript(ScriptHost(agent_id=AGENT)), "echo": EchoScript()}
    async with Agent(settings_for(), scripts=scripts):  # type: ignore[dict-item]
        kv = await bus.js.key_value(KV_SCRIPTS)
        spec = ScriptSpec.model_validate_json((await kv.get("echo")).value or b"")
        assert spec.config_schema["properties"]["words"]["type"] == "array"
        start = (await eventually(lambda: bus.of("agent.started"), what="start"))[0]
        assert {s.name for s in start.scripts} == {"post", "echo"}

        base = RunTask(
            task_id=20,
            dispatch_id="a",
            serial="device_serial_1",
            script_name="echo",
            script_config={"words": ["hi", "there"]},
        )
        assert (await bus.run(AGENT, base)).accepted
        done = await bus.outcome(20)
        assert done.result == {"said": ["hi", "there"], "serial": "device_serial_1"}

        bad = base.model_copy(update={"task_id": 21, "script_config": {"words": []}})
        assert (await bus.run(AGENT, bad)).accepted
        failed = await bus.outcome(21)
        assert failed.reason.startswith("script_config.words:")


async def test_entry_point_discovery_finds_post() -> None:
    from fleet_agent.scripts import ScriptHost, discover

    scripts = discover(ScriptHost(agent_id="x"))
    assert isinstance(scripts["post"], PostScript)


async def test_a_thousand_simulated_phones(
    settings_for: Callable[..., AgentSettings], bus: Bus, video: Path
) -> None:
    beats: list[Heartbeat] = []

    async def on_beat(msg: Any) -> None:
        beats.append(Heartbeat.from_bytes(msg.data))

    await bus.nc.subscribe(heartbeat_subject(AGENT), cb=on_beat)
    async with Agent(settings_for(agent_sim_devices=1000, agent_sim_speed=0)):
        start = (await eventually(lambda: bus.of("agent.started"), what="start"))[0]
        assert len(start.devices) == 1000
        await eventually(lambda: len(bus.of("device.accounts")) == 1000, what="accounts")
        requests = [post(100 + n, f"device_serial_{n}", video) for n in (1, 500, 1000)]
        for request in requests:
            assert (await bus.run(AGENT, request)).accepted
        for request in requests:
            assert (await bus.outcome(request.task_id)).type == "task.completed"
        await eventually(lambda: len(beats) >= 2, what="two heartbeats")
    assert all(len(b.devices) == 1000 for b in beats)


async def test_parallel_limit_refuses_naming_the_setting(
    settings_for: Callable[..., AgentSettings], bus: Bus, video: Path
) -> None:
    async with Agent(settings_for(agent_max_parallel=1)):
        first = await bus.run(AGENT, post(30, "device_serial_1", video, upload_wait_time=300))
        assert first.accepted
        refused = await bus.run(AGENT, post(31, "device_serial_2", video))
        assert not refused.accepted
        assert (
            refused.reason
            == f"agent {AGENT} is at its limit of 1 running scripts (FLEET_AGENT_MAX_PARALLEL=1)"
        )


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_AGENT_MATERIAL_ROOTS", f"{tmp_path}/a, {tmp_path}/b")
    monkeypatch.setenv("FLEET_AGENT_MAX_PARALLEL", "")
    monkeypatch.setenv("FLEET_AGENT_ADB_ADDRESS", "10.0.0.2:5038")
    settings = AgentSettings()
    assert settings.agent_material_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.agent_max_parallel is None
    assert settings.adb_host_port == ("10.0.0.2", 5038)


async def test_malformed_run_request_is_refused_naming_the_field(agent: Agent, bus: Bus) -> None:
    from fleet_contracts.subjects import agent_run_subject

    resp = await bus.nc.request(agent_run_subject(AGENT), b'{"task_id": "seven"}', timeout=5)
    reply = AgentReply.model_validate_json(resp.data)
    assert not reply.accepted
    assert "task_id:" in reply.reason
    assert "serial: required" in reply.reason


async def test_a_run_for_an_earlier_process_is_refused_and_runs_are_logged(
    settings_for: Callable[..., AgentSettings], bus: Bus, video: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "runs.jsonl"
    async with Agent(settings_for(agent_run_log=log_file)) as first:
        old = first.incarnation
        await bus.run(
            AGENT, post(21, "device_serial_1", video).model_copy(update={"incarnation": old})
        )
        await bus.outcome(21)
    async with Agent(settings_for(agent_run_log=log_file)) as second:
        assert second.incarnation != old
        starts = await eventually(
            lambda: len(bus.of("agent.started")) == 2 and bus.of("agent.started"),
            what="both processes announced",
        )
        assert [s.incarnation for s in starts] == [old, second.incarnation]
        stale = post(22, "device_serial_1", video).model_copy(update={"incarnation": old})
        assert await bus.run(AGENT, stale) == AgentReply(
            accepted=False, reason=f"run was sent to an earlier process of agent {AGENT}"
        )
        current = post(23, "device_serial_2", video).model_copy(
            update={"incarnation": second.incarnation}
        )
        assert (await bus.run(AGENT, current)).accepted
        await bus.outcome(23)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(r["task_id"], r["event"]) for r in lines] == [
        (21, "run.begun"),
        (21, "task.completed"),
        (21, "reported"),
        (23, "run.begun"),
        (23, "task.completed"),
        (23, "reported"),
    ]
    assert {r["incarnation"] for r in lines if r["task_id"] == 23} == {second.incarnation}
    assert not bus.for_task(22)
