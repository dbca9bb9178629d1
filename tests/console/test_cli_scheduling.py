"""`fleet group`, `fleet schedule`, `fleet webhook` and the group / retry options of
`fleet task create`, against the real stack shared with the console's tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from fleet_cli.app import app

from .conftest import ConsoleStack


@pytest.fixture
def fleet(console_stack: ConsoleStack) -> Any:
    runner = CliRunner()
    env = {"FLEET_URL": console_stack.url, "FLEET_API_KEY": console_stack.admin_key}

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return result.stdout if code == 0 else result.output

    return run


def test_groups_schedules_and_webhooks_from_the_command_line(
    fleet: Any, console_stack: ConsoleStack
) -> None:
    group = json.loads(fleet("group", "create", "cli-shop", "-s", "device_serial_3", "--json"))
    assert group["serials"] == ["device_serial_3"]
    phones = json.loads(fleet("device", "ls", "--group", "cli-shop", "--json"))
    assert [d["serial"] for d in phones] == ["device_serial_3"]

    out = fleet(
        "task", "create", "--group", "cli-shop", "-m", console_stack.video,
        "--retry-attempts", "2", "--retry-backoff", "0-1", "--wait", "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert summary["completed"] == 1 and summary["failed"] == {}

    assert "cron:" in fleet(
        "schedule", "create", "--cron", "61 * * * *", "--group", "cli-shop", code=2
    )
    weekly = ["schedule", "create", "--days", "mon,fri", "--times", "07:15"]
    target = ["--tz", "Europe/Paris", "--group", "cli-shop", "-m", console_stack.video]
    created = json.loads(fleet(*weekly, *target, "--json"))
    assert created["next_fires"][0][11:19] == "07:15:00"  # local time, in the zone's offset
    assert "paused" in fleet("schedule", "pause", str(created["id"]))
    assert "40901" in fleet("group", "rm", str(group["id"]), code=2)  # the schedule names it
    fleet("schedule", "rm", str(created["id"]))

    secret = fleet(
        "webhook", "create", "http://127.0.0.1:9/hook", "-e", "task.failed"
    ).splitlines()[0]
    assert secret.startswith("whsec_")
    hooks = json.loads(fleet("webhook", "ls", "--json"))
    hook = next(h for h in hooks if h["url"] == "http://127.0.0.1:9/hook")
    assert hook["secret"] is None and hook["event_types"] == ["task.failed"]
    assert "url:" in fleet("webhook", "create", "ftp://x/y", "-e", "task.failed", code=2)
    fleet("webhook", "rm", str(hook["id"]))
    fleet("group", "rm", str(group["id"]))
    assert "cli-shop" not in fleet("group", "ls")
