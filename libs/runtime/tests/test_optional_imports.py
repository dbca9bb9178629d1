"""trim(): nats-py and structlog imported without aiohttp and rich, which stay importable;
a terminal's console logs keep rich; a WebSocket server gets aiohttp back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fleet_runtime.optional_imports import json_lines


def _run(code: str, log_format: str) -> str:
    env = {**os.environ, "FLEET_LOG_FORMAT": log_format}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


TRIMMED = """
import sys
from fleet_runtime.optional_imports import trim
trim()
import nats, structlog, structlog.dev, structlog.tracebacks
import nats.aio.transport as transport
print(sorted(m for m in ("aiohttp", "rich") if m in sys.modules), end=" ")
print(structlog.dev.rich is None, structlog.tracebacks.rich is None, end=" ")
print(transport.aiohttp is None, end=" ")
import aiohttp, rich.console
print(aiohttp.ClientSession.__name__, rich.console.Console.__name__)
"""


def test_json_logs_import_neither_aiohttp_nor_rich_and_both_stay_importable() -> None:
    assert _run(TRIMMED, "json") == "[] True True True ClientSession Console"


def test_console_logs_keep_rich_for_structlog() -> None:
    assert _run(TRIMMED, "console") == "['rich'] False False True ClientSession Console"


def test_a_websocket_server_gets_aiohttp_back() -> None:
    code = """
from fleet_runtime.optional_imports import trim, nats_websockets
trim()
import nats.aio.transport as transport
before = transport.aiohttp is None
nats_websockets()
import aiohttp
print(before, transport.aiohttp is aiohttp)
"""
    assert _run(code, "json") == "True True"


@pytest.mark.parametrize(
    ("env", "json", "expected"),
    [("json", False, True), ("console", True, False), ("", True, True), ("", False, False)],
)
def test_log_format_setting_wins_over_the_argument(
    monkeypatch: pytest.MonkeyPatch, env: str, json: bool, expected: bool
) -> None:
    monkeypatch.setenv("FLEET_LOG_FORMAT", env)
    assert json_lines(json) is expected
