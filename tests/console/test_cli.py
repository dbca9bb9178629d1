"""`fleet`, the operator's command line, against the real stack: every command through
the gateway with an admin key from the environment, as on an operator's laptop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from fleet_cli.app import app

from .conftest import ConsoleStack, create, missing_file, post_body, task_status


@pytest.fixture
def fleet(console_stack: ConsoleStack) -> Any:
    runner = CliRunner()
    env = {"FLEET_URL": console_stack.url, "FLEET_API_KEY": console_stack.admin_key}

    def run(*args: str, code: int = 0, key: str | None = None) -> str:
        result = runner.invoke(
            app, list(args), env={**env, **({"FLEET_API_KEY": key} if key else {})}
        )
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        # What a script would read on success; with the error messages on failure.
        return result.stdout if code == 0 else result.output

    return run


def test_create_and_wait_shows_the_batch_to_its_end(
    fleet: Any, console_stack: ConsoleStack
) -> None:
    out = fleet(
        "task", "create", "-s", "device_serial_1", "-s", "phone_b_1",
        "-m", console_stack.video, "--caption", "{hi|hello} there", "--wait", "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert summary["completed"] == 2 and summary["failed"] == {}
    for task_id in summary["task_ids"]:
        assert task_status(console_stack.client(), task_id) == 2

    out = fleet(
        "task", "create", "-s", "device_serial_2", "-s", "phone_b_2",
        "--config", json.dumps({"material_list": [missing_file()]}), "--wait",
        code=1,
    )  # fmt: skip
    assert "0 completed, 2 failed" in out
    assert "no-such-video.mp4" in out


def test_list_get_stop_retry_retry_all_and_rm(fleet: Any, console_stack: ConsoleStack) -> None:
    api = console_stack.client()
    (slow,) = create(api, post_body(["phone_b_3"], console_stack.video, wait=600))
    page = json.loads(fleet("task", "ls", "--serial", "phone_b_3", "--json"))
    assert page["tasks"][0]["id"] == slow and page["total"] >= 1
    assert f"{slow}" in fleet("task", "ls", "--serial", "phone_b_3")

    fleet("task", "stop", str(slow))
    got = json.loads(fleet("task", "get", str(slow), "--history", "--json"))
    assert got["status"] == 3 and got["reason"] == "stopped"
    assert "task.stopped" in [e["type"] for e in got["history"]]
    assert "stopped" in fleet("task", "get", str(slow))

    fleet("task", "retry", str(slow))
    assert task_status(api, slow) in (0, 1)
    out = fleet("task", "retry", str(slow), code=2)  # not failed any more: 409
    assert "40901" in out
    fleet("task", "stop", str(slow))
    retried = json.loads(fleet("task", "retry-all", "--yes", "--json"))
    assert slow in retried["task_ids"]

    deleted = json.loads(fleet("task", "rm", str(slow), "--yes", "--json"))
    assert deleted["deleted_ids"] == [slow]
    assert "40401" in fleet("task", "get", str(slow), code=2)
    stats = json.loads(fleet("task", "stats", "--json"))
    assert set(stats) == {"total", "pending", "running", "completed", "failed"}


def test_devices_and_the_event_tail_with_resume(fleet: Any, console_stack: ConsoleStack) -> None:
    devices = json.loads(fleet("device", "ls", "--online", "--json"))
    assert {d["host"] for d in devices} == {"host-a", "host-b"}
    assert "device_serial_1" in fleet("device", "ls")

    (task_id,) = create(console_stack.client(), post_body(["phone_b_1"], console_stack.video))
    lines = fleet(
        "events", "tail", "--task-id", str(task_id), "--since", "0", "--limit", "3", "--json"
    )
    events = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    assert events[0]["type"] == "task.created"
    assert all(e["data"]["task_id"] == task_id for e in events)
    # Resuming after the first event gives the second one first.
    again = fleet(
        "events", "tail", "--task-id", str(task_id), "--since", events[0]["id"],
        "--limit", "1", "--json",
    )  # fmt: skip
    assert json.loads(again.splitlines()[0])["id"] == events[1]["id"]


def test_keys_create_list_revoke_through_the_gateway(
    fleet: Any, console_stack: ConsoleStack
) -> None:
    secret = fleet("keys", "create", "ci-bot", "--role", "viewer").splitlines()[0]
    assert secret.startswith("fk_")
    listed = json.loads(fleet("keys", "ls", "--json"))
    bot = next(k for k in listed if k["name"] == "ci-bot" and not k["revoked"])
    assert bot["role"] == "viewer" and "key" not in bot
    # A viewer reads but may not act, and may not manage keys.
    assert "total" in fleet("task", "stats", "--json", key=secret)
    assert "40302" in fleet("task", "retry-all", "--yes", key=secret, code=2)
    assert "40302" in fleet("keys", "ls", key=secret, code=2)
    assert "40901" in fleet("keys", "create", "ci-bot", code=2)

    fleet("keys", "revoke", "ci-bot")
    assert "revoked" in fleet("task", "stats", key=secret, code=2)
    assert "40401" in fleet("keys", "revoke", "ci-bot", code=2)


def test_an_unreachable_gateway_is_named(fleet: Any) -> None:
    out = fleet("--url", "http://127.0.0.1:9", "task", "ls", code=3)
    assert "cannot reach the gateway at http://127.0.0.1:9" in out
