"""A fresh system per test: NATS, PostgreSQL, gateway, scheduler(s), agent(s) as processes.

Started exactly as `make run` starts them (`fleet_devstack.stack`), on free ports; a
failing test prints the tail of every service's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_devstack import free_port
from fleet_devstack.stack import AgentSpec, Stack, StackConfig
from tests.e2e.harness import FAST_TIMINGS, Api

StackFactory = Callable[..., Stack]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def stack_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StackFactory]:
    stacks: list[Stack] = []

    def make(
        agents: list[AgentSpec] | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
        **config: Any,
    ) -> Stack:
        # Metrics ports are picked free here but bound later by the services, so a
        # parallel test worker can take one meanwhile; only the metrics test asks for them.
        config.setdefault("metrics", False)
        cfg = StackConfig(
            data_dir=tmp_path / f"stack{len(stacks)}",
            api_port=free_port(),
            durable_postgres=False,
            agents=agents or [AgentSpec(agent_id="host-1", sim_devices=8, sim_speed=0.02)],
            env={**FAST_TIMINGS, **(env or {})},
            **config,
        )
        stack = Stack(cfg)
        stacks.append(stack)
        if start:
            stack.start_infrastructure()
            stack.start_services()
            stack.wait_ready()
        return stack

    yield make
    failed = getattr(request.node, "rep_call", None)
    for stack in stacks:
        if failed is not None and failed.failed:
            for svc in stack.services():
                print(f"\n===== {svc.name} (last lines) =====\n{svc.output()[-6000:]}")
        stack.stop()


@pytest.fixture
def stack(stack_factory: StackFactory) -> Stack:
    return stack_factory()


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    client = Api(stack.api_url)
    yield client
    client.close()


@pytest.fixture
def video(tmp_path: Path) -> str:
    """A media file that exists on the agent's host (this machine)."""
    path = tmp_path / "media" / "video1.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 1024)
    return str(path)
