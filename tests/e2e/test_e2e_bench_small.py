"""The benchmark scenarios, run once at small scale so `make bench` cannot rot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import handover, system

pytestmark = pytest.mark.slow


def test_system_benchmark_small_scale(tmp_path: Path) -> None:
    result = asyncio.run(system.run(system.SMALL, data_dir=tmp_path))
    assert result.created == system.SMALL.e2e_tasks
    assert result.completed == result.created, result.rows
    assert result.failed == 0
    metrics = [row[0] for row in result.rows]
    assert any("dispatch latency" in m for m in metrics)
    assert any(m.startswith("raw: JetStream") for m in metrics)
    assert "REST create / raw JetStream publish" in metrics
    assert "REST create, nothing else running" in metrics
    # Every process of ours worked during the flood, and its CPU time was read.
    cpu = result.flood.cpu_seconds
    assert set(cpu) == {"NATS", "PostgreSQL", "gateway", "scheduler", "agent"}
    assert all(s > 0 for s in cpu.values()), cpu
    assert "CPU per task lifecycle, all our processes" in metrics
    # The scheduler's histogram of reports' waits was read around the flood.
    [wait] = [row for row in result.rows if row[0].startswith("reports' wait in REPORTS")]
    assert wait[1].startswith("<= "), wait
    table = system.table("small", result.rows)
    assert table.count("\n|") == len(result.rows) + 2


def test_e2e_flood_with_two_schedulers_small_scale(tmp_path: Path) -> None:
    flood = asyncio.run(system.e2e(system.SMALL, schedulers=2, data_dir=tmp_path))
    assert len(flood.ids) == system.SMALL.e2e_tasks
    assert flood.completed == len(flood.ids)
    assert flood.failed == 0
    assert len(flood.cpu_seconds) == 5


def test_lease_handover_small_scale(tmp_path: Path) -> None:
    rows = {row[0]: row for row in asyncio.run(handover.run(system.SMALL, data_dir=tmp_path))}
    _, value, note = rows["lease handover after a SIGKILL"]
    # The 5 s lease, a quarter-lease turn of the survivor, and room for a slow machine:
    # a handover that waited for something else (a member row, a restart) would not fit.
    assert float(value.removesuffix(" s")) <= 15, note
    assert (
        rows["flood around the kill"][1]
        == f"{handover.flood_size(system.SMALL)} completed, 0 failed"
    )
