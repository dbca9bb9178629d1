"""One real stack for the console's browser tests and the CLI's tests: NATS,
PostgreSQL, gateway, scheduler and two simulated hosts as processes, started exactly
as `make run` starts them, then locked with an admin key made through the REST API
(as an operator would on a fresh gateway), so every test also goes through the keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleet_devstack import free_port
from fleet_devstack.stack import AgentSpec, Stack, StackConfig
from tests.e2e.harness import FAST_TIMINGS, wait_until

HOSTS = {"host-a": ("device_serial_", 4), "host-b": ("phone_b_", 3)}
SIM_SPEED = 0.05


@dataclass
class ConsoleStack:
    url: str
    admin_key: str
    viewer_key: str
    video: str
    stack: Stack

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key or self.admin_key}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=15)


def _make_key(client: httpx.Client, name: str, role: str) -> str:
    r = client.post("/keys", json={"name": name, "plan": "pro", "role": role})
    assert r.status_code == 200, r.text
    secret: str = r.json()["data"]["key"]
    return secret


@pytest.fixture(scope="package")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    root = tmp_path_factory.mktemp("console")
    video = root / "video1.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4096)
    agents = [
        AgentSpec(
            agent_id=host,
            sim_devices=count,
            sim_speed=SIM_SPEED,
            env={"FLEET_AGENT_SIM_SERIAL_PREFIX": prefix},
        )
        for host, (prefix, count) in HOSTS.items()
    ]
    config = StackConfig(
        data_dir=root / "stack",
        api_port=free_port(),
        durable_postgres=False,
        agents=agents,
        env=dict(FAST_TIMINGS),
        # No metrics ports: picked free here, bound later, a parallel worker may take one.
        metrics=False,
    )
    stack = Stack(config)
    try:
        stack.start_infrastructure()
        stack.start_services()
        stack.wait_ready()
        # The first key is made through the open loopback gateway, whose caller is admin.
        with httpx.Client(base_url=f"{stack.api_url}/api/v1", timeout=15) as open_client:
            admin = _make_key(open_client, "ops-admin", "admin")
        with httpx.Client(
            base_url=f"{stack.api_url}/api/v1", headers={"X-API-Key": admin}, timeout=15
        ) as client:
            viewer = _make_key(client, "wall-screen", "viewer")

            def all_online() -> bool:
                r = client.get("/device", params={"online": "true"})
                data = r.json()["data"]
                devices = data if isinstance(data, list) else data["devices"]
                return r.status_code == 200 and len(devices) == sum(n for _, n in HOSTS.values())

            wait_until(all_online, what="every simulated phone online")
        yield ConsoleStack(
            url=stack.api_url, admin_key=admin, viewer_key=viewer, video=str(video), stack=stack
        )
    finally:
        stack.stop()


def post_body(serials: list[str], video: str, wait: int = 0, **config: object) -> dict[str, object]:
    return {
        "serials": serials,
        "script_name": "post",
        "script_config": {"material_list": [video], "upload_wait_time": wait, **config},
    }


def create(client: httpx.Client, body: dict[str, object]) -> list[int]:
    r = client.post("/task", json=body)
    assert r.status_code == 200, r.text
    ids: list[int] = r.json()["data"]["task_ids"]
    return ids


def task_status(client: httpx.Client, task_id: int) -> int:
    status: int = client.get(f"/task/{task_id}").json()["data"]["status"]
    return status


def missing_file(root: Path | str = "/nonexistent") -> str:
    return f"{root}/no-such-video.mp4"
