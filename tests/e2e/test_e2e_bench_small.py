"""The benchmark scenarios, run once at small scale so `make bench` cannot rot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import system

pytestmark = pytest.mark.slow


def test_system_benchmark_small_scale(tmp_path: Path) -> None:
    result = asyncio.run(system.run(system.SMALL, data_dir=tmp_path))
    assert result.created == system.SMALL.e2e_tasks
    assert result.completed == result.created, result.rows
    assert result.failed == 0
    metrics = [row[0] for row in result.rows]
    assert any("dispatch latency" in m for m in metrics)
    assert any(m.startswith("raw: JetStream") for m in metrics)
    table = system.table("small", result.rows)
    assert table.count("\n|") == len(result.rows) + 2
