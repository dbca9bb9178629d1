"""`python -m fleet_agent` as an operator runs it: starts, serves, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from agent_testkit import Bus, eventually

from fleet_contracts.agent import RunTask


async def test_sigterm_fails_running_tasks_and_exits_cleanly(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x" * 100)
    env = {
        **os.environ,
        "FLEET_NATS_URL": nats_url,
        "FLEET_AGENT_ID": "proc-1",
        "FLEET_AGENT_DRIVER": "sim",
        "FLEET_AGENT_SIM_DEVICES": "2",
        "FLEET_AGENT_SIM_SPEED": "0.01",
        "FLEET_AGENT_MATERIAL_ROOTS": str(tmp_path),
        "FLEET_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet_agent", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        started = await eventually(lambda: bus.of("agent.started"), within=20, what="start")
        assert [d.serial for d in started[0].devices] == ["device_serial_1", "device_serial_2"]
        request = RunTask(
            task_id=1,
            dispatch_id="a",
            serial="device_serial_1",
            script_name="post",
            script_config={"material_list": [str(clip)], "upload_wait_time": 600},
        )
        assert (await bus.run("proc-1", request)).accepted
        await eventually(lambda: bus.of("task.progress", 1), what="progress")

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    failed = await bus.outcome(1)
    assert (failed.reason, failed.stopped) == ("agent stopping", False)
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert '"event": "agent.stopped"' in log
