"""Fixtures of the agent's tests; the fakes themselves live in `agent_testkit`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_testkit import Bus, FakeAdbServer

from fleet_runtime.bus import ensure_streams


@pytest.fixture
def fake_adb() -> Iterator[FakeAdbServer]:
    server = FakeAdbServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js)
    watcher = Bus(nc, js)
    await watcher.listen()
    yield watcher
    await nc.drain()
