"""Two agents as two hosts: each in its own network namespace, reaching NATS over veth.

Skipped, saying why, where the machine does not allow network namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet_devstack.stack import AgentSpec
from tests.e2e.conftest import StackFactory
from tests.e2e.harness import Api

pytestmark = pytest.mark.netns


@dataclass
class Host:
    netns: str
    veth: str  # the end on this machine; taking it down cuts the host off
    gateway: str  # this machine's address as the host sees it


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    tag = uuid.uuid4().hex[:6]
    made: list[Host] = []
    try:
        for n in (1, 2):
            host = Host(netns=f"fleet-{tag}-h{n}", veth=f"fv{tag}{n}", gateway=f"10.231.{n}.1")
            try:
                _ip("netns", "add", host.netns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"this machine refuses `ip netns add`: {exc.stderr.decode().strip()}")
            made.append(host)
            peer = f"fp{tag}{n}"
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.netns)
            _ip("addr", "add", f"{host.gateway}/30", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "addr", "add", f"10.231.{n}.2/30", "dev", peer)
            _ip("-n", host.netns, "link", "set", peer, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)


def test_tasks_go_to_the_right_host_and_a_cut_link_fails_only_its_tasks(
    hosts: list[Host], stack_factory: StackFactory, tmp_path: Path
) -> None:
    # `hosts` comes first so it is torn down last: the agents stop while their
    # namespaces still exist.
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 512)
    stack = stack_factory(
        agents=[
            AgentSpec(agent_id="host-1", sim_devices=2, sim_speed=0.02, netns=hosts[0].netns),
            AgentSpec(
                agent_id="host-2",
                sim_devices=2,
                sim_speed=0.02,
                netns=hosts[1].netns,
                env={"FLEET_AGENT_SIM_SERIAL_PREFIX": "h2_serial_"},
            ),
        ],
        nats_bind="0.0.0.0",
        start=False,
    )
    for spec, host in zip(stack.config.agents, hosts, strict=True):
        spec.nats_url = f"nats://{host.gateway}:{stack.nats.port}"
    stack.start_infrastructure()
    stack.start_services()
    stack.wait_ready()
    api = Api(stack.api_url)

    devices = {d["serial"]: d["agent_id"] for d in api.wait_devices(4)}
    assert devices == {
        "device_serial_1": "host-1",
        "device_serial_2": "host-1",
        "h2_serial_1": "host-2",
        "h2_serial_2": "host-2",
    }

    config = {"material_list": [str(video)], "upload_wait_time": 0}
    quick = api.create(serials=["device_serial_1", "h2_serial_1"], script_config=config)
    for task in api.wait_all_done(quick):
        assert task["status"] == 2
        assert task["agent_id"] == devices[task["serial"]]

    long = {"material_list": [str(video)], "upload_wait_time": 3600}
    [cut_off] = api.create(serials=["device_serial_2"], script_config=long)
    [other] = api.create(serials=["h2_serial_2"], script_config={**long, "upload_wait_time": 300})
    api.wait_status(cut_off, 1)
    api.wait_status(other, 1)
    _ip("link", "set", hosts[0].veth, "down")
    failed = api.wait_status(cut_off, 3, timeout=20)
    assert failed["reason"].startswith("agent lost")
    assert api.task(other)["status"] == 1
    assert api.wait_status(other, 2, timeout=60)["status"] == 2
