"""The Celery + Redis peer, run once at small scale so `make bench` cannot rot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from bench.peers import celery_redis
from bench.peers.redis_server import redis_binary

pytestmark = pytest.mark.slow


def test_peer_runs_every_task_and_counts_the_cpu_of_its_three_processes(
    tmp_path: Path,
) -> None:
    try:
        redis_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    # Under xdist this process also holds other tests' servers (PostgreSQL): only what
    # the peer started counts.
    before = set(psutil.Process().children(recursive=True))
    result = asyncio.run(celery_redis.run(200, workdir=tmp_path))
    assert result.tasks == 200
    assert 0 < result.enqueue_seconds <= result.seconds
    assert set(result.cpu_seconds) == {"redis-server", "worker", "producer"}
    assert all(s > 0 for s in result.cpu_seconds.values()), result.cpu_seconds
    rows = celery_redis.rows(result)
    assert rows[0][1].endswith("tasks/s")
    # Redis, the worker and the producer are stopped afterwards.
    started = set(psutil.Process().children(recursive=True)) - before
    # A backend PostgreSQL forks meanwhile is a child of a server that was already there.
    peers = [p for p in started if not before.intersection(_parents(p))]
    assert not [p for p in peers if p.is_running()]


def _parents(process: psutil.Process) -> list[psutil.Process]:
    try:
        parents: list[psutil.Process] = process.parents()
    except psutil.NoSuchProcess:
        return []
    return parents
