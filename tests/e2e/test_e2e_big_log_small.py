"""The big-log benchmark at small scale, so `make bench` cannot rot: the log grown
set-wise (events and read models together) keeps counters equal to a count over the
table, `rebuild-read-models` over the grown log gives the same counters back (both
checked inside the run, which raises otherwise), and every read answers the total."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import big_log

pytestmark = pytest.mark.slow


def test_big_log_benchmark_small_scale(tmp_path: Path) -> None:
    rows = asyncio.run(big_log.run(big_log.SMALL, data_dir=tmp_path))
    values = {name: value for name, value, _ in rows}
    assert values["tasks not deleted (stats)"] == f"{big_log.SMALL.big:,}"
    assert any(name.startswith("rebuild-read-models") for name in values)
    assert any(name.startswith("scheduler restart to ready") for name in values)
    small, big = f"{big_log.SMALL.small:,} tasks", f"{big_log.SMALL.big:,} tasks"
    for read in ("list", "list status+serial", "list script_name", "list source", "stats"):
        assert f"{read} p50 / p99, {small}" in values
        assert f"{read} p50 / p99, {big}" in values
