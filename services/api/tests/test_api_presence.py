"""Scheduler presence: the gateway knows a scheduler runs from its announcements, not
from a ping per command; none heard means a 503 at once, and one back means accepted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from fleet_api import scheduler
from fleet_api.presence import Presence
from fleet_api.state import Gateway
from fleet_contracts.presence import PRESENCE_WINDOW_SECONDS, SchedulerPresence
from fleet_contracts.queries import Ping, Query
from fleet_contracts.subjects import SCHEDULER_PRESENCE
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Served, poll_until

STOP = "/api/v1/task/1/stop"  # a command any scheduler answers (40401: no such task)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_presence_lasts_the_window_and_a_leaving_scheduler_is_forgotten_at_once() -> None:
    clock = Clock()
    presence = Presence(window=3.0, clock=clock)
    assert presence.verdict() == "unknown"
    presence.heard_from(SchedulerPresence(scheduler_id="a"))
    clock.now += 2.9
    assert presence.verdict() == "present"
    clock.now += 0.2
    assert presence.verdict() == "unknown"
    presence.confirm_absent()
    assert presence.verdict() == "absent"
    presence.heard_from(SchedulerPresence(scheduler_id="a"))
    presence.heard_from(SchedulerPresence(scheduler_id="b"))
    presence.heard_from(SchedulerPresence(scheduler_id="a", leaving=True))
    assert presence.verdict() == "present"  # b is still there
    presence.heard_from(SchedulerPresence(scheduler_id="b", leaving=True))
    assert presence.verdict() == "unknown"


def test_a_present_scheduler_is_never_confirmed_absent() -> None:
    presence = Presence(window=3.0, clock=Clock())
    presence.heard_from(SchedulerPresence(scheduler_id="a"))
    presence.confirm_absent()
    assert presence.verdict() == "present"


def _pings(monkeypatch: pytest.MonkeyPatch) -> list[Query]:
    """Every ping the gateway's command path sends, from now on (a listener on the bus
    would itself be a responder, and hide that nobody answers)."""
    seen: list[Query] = []
    ask = scheduler.ask

    async def counting(gw: Gateway, query: Query, within: float | None = None) -> Any:
        if isinstance(query, Ping):
            seen.append(query)
        return await ask(gw, query, within)

    monkeypatch.setattr(scheduler, "ask", counting)
    return seen


async def _is_503_none_running(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await client.post(STOP)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == 50301
    assert "no scheduler is running" in r.json()["message"]
    assert time.monotonic() - started < 1.0


async def test_commands_need_no_ping_and_a_stopped_scheduler_means_503_at_once(
    api: Served, nats_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _pings(monkeypatch)
    settings = SchedulerSettings(nats_url=nats_url, database_url=pg_dsn, scheduler_id="s-1")
    async with Scheduler(settings):
        for _ in range(10):
            r = await api.client.post(STOP)
            assert r.json()["code"] == 40401, r.text
        # At most the one ping of a gateway that had heard nobody yet; the old gateway
        # pinged before each of the ten.
        assert len(pings) <= 1
    # The stopped scheduler said it was leaving: refused at once, and one ping at most
    # finds out nobody else runs.
    await _is_503_none_running(api.client)
    asked = len(pings)
    for _ in range(5):
        await _is_503_none_running(api.client)
    assert len(pings) == asked, "no query per command while no scheduler runs"

    async with Scheduler(settings):

        async def accepted() -> bool:
            code: int = (await api.client.post(STOP)).json()["code"]
            return code == 40401

        await poll_until(accepted, within=5, what="the restarted scheduler to be heard")
    assert len(pings) == asked


async def test_a_silent_scheduler_is_trusted_for_the_window_then_refused(
    serve: Callable[..., Awaitable[Served]], bus: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await serve(api_command_timeout_seconds=0.5)
    pings = _pings(monkeypatch)
    # One that announces itself and then dies without a word (SIGKILL): no ping asks,
    # so within the window the command goes to the stream and waits its timeout...
    await bus.publish(SCHEDULER_PRESENCE, SchedulerPresence(scheduler_id="ghost").to_bytes())
    await bus.flush()
    await asyncio.sleep(0.1)
    heard_at = time.monotonic()
    r = await api.client.post(STOP)
    assert r.status_code == 503
    assert "accepted under id" in r.json()["message"], r.text
    assert pings == []
    # ... and once the window has passed with nothing heard, it is refused at once.
    await asyncio.sleep(max(0.0, heard_at + PRESENCE_WINDOW_SECONDS + 0.1 - time.monotonic()))
    await _is_503_none_running(api.client)
    await _is_503_none_running(api.client)
    assert len(pings) == 1
