"""Every service, run as a process the way `make run` runs it, serves /metrics where the
stack says, and one flood of tasks moves each service's counters by the same amount."""

from __future__ import annotations

import httpx

from fleet_devstack.stack import AgentSpec, Stack
from tests.e2e.conftest import StackFactory
from tests.e2e.harness import Api, post, wait_until
from tests.scrape import Scrape, parse

TASKS = 6


def scrape(url: str) -> Scrape:
    resp = httpx.get(url, timeout=10)
    resp.raise_for_status()
    return parse(resp.text)


def test_each_service_counts_the_same_tasks(stack_factory: StackFactory, video: str) -> None:
    stack: Stack = stack_factory(
        agents=[AgentSpec(agent_id="host-1", sim_devices=3, sim_speed=0)], metrics=True
    )
    urls = stack.metrics_urls()
    assert set(urls) == {"api", "scheduler", "agent"}, urls
    assert all(url.endswith("/metrics") for url in urls.values())
    api = Api(stack.api_url)
    try:
        wait_until(
            lambda: api.ok("GET", "/device", params={"online": "true"})["total"] == 3,
            what="3 phones online",
        )
        serials = [f"device_serial_{n}" for n in (1, 2, 3)]
        ids = api.create(serials=serials, script_config=post(video))
        ids += api.create(serials=serials, script_config=post(video))
        assert len(ids) == TASKS
        assert all(t["status"] == 2 for t in api.wait_all_done(ids))
    finally:
        api.close()

    def scheduler_settled() -> Scrape | None:
        now = scrape(urls["scheduler"])
        return now if now.value("fleet_relay_lag_events") == 0 else None

    sched = wait_until(scheduler_settled, what="the relay to catch up")
    assert sched.value("fleet_tasks", state="completed") == TASKS
    assert sched.total("fleet_dispatch_latency_seconds_count") == TASKS
    assert sched.value("fleet_events_appended_total", type="task.completed") == TASKS
    assert sched.value("fleet_commands_handled_total", command="create_tasks", code="0") == 2
    assert sched.value("fleet_devices_online", agent="host-1", host="host-1") == 3
    assert sched.value("fleet_agent_up", agent="host-1", host="host-1") == 1
    assert sched.value("fleet_relay_leaders") == 1
    assert sched.value("fleet_partitions_leased", scheduler="scheduler-1") == 16
    assert sched.value("fleet_database_up") == 1

    agent = scrape(urls["agent"])
    assert agent.value("fleet_agent_runs_total", script="post", outcome="completed") == TASKS
    assert agent.value("fleet_agent_info", agent="host-1", host="host-1") == 1

    gateway = scrape(urls["api"])
    created = gateway.value(
        "fleet_api_http_requests_total", handler="/api/v1/task", method="POST", status="200"
    )
    assert created == 2
