"""No host can act for another: the real nats-server, run with deploy/nats/cluster.conf
(only its ports and file paths rewritten) and identities issued by the creds CLI's code.

Each refusal is checked twice: the client gets the server's permissions error, and
the server's own log records the violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from fleet_contracts.permissions import Role, inbox_prefix
from fleet_contracts.subjects import (
    ALL_STREAMS,
    KV_API_KEYS,
    KV_SCRIPTS,
    REPORTS,
    agent_run_subject,
    command_subject,
    heartbeat_subject,
    report_subject,
)
from fleet_devstack import EmbeddedNats, creds, pki
from fleet_devstack.servers import free_port
from fleet_runtime import replies
from fleet_runtime.bus import connect, ensure_streams
from fleet_runtime.link import NatsLink

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_CONF = ROOT / "deploy" / "nats" / "cluster.conf"


NODES = ("nats-1", "nats-2", "nats-3")


def render_cluster_conf(
    node: str, directory: Path, tls_dir: Path, cluster_ports: dict[str, int], leaf_port: int
) -> Path:
    """deploy/nats/cluster.conf for one node on this machine: ports and paths, nothing else."""
    text = CLUSTER_CONF.read_text()
    text = text.replace("/etc/nats/tls/", f"{tls_dir}/")
    text = text.replace("store_dir: /data", f"store_dir: {directory / node}")
    text = text.replace("port: 6222", f"port: {cluster_ports[node]}")
    text = text.replace("port: 7422", f"port: {leaf_port}")
    for other, port in cluster_ports.items():
        text = text.replace(f"nats-route://{other}:6222", f"nats-route://127.0.0.1:{port}")
    out = directory / f"{node}.conf"
    out.write_text(text)
    return out


@dataclass
class Deployment:
    nodes: list[EmbeddedNats]
    creds_dir: Path
    ca: Path
    leaf_ports: list[int]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def seed(self, name: str) -> Path:
        return creds.seed_path(self.creds_dir, name)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def link(self, name: str | None, role: Role, agent_id: str | None = None) -> NatsLink:
        return NatsLink(
            nkey_seed_file=self.seed(name) if name else None,
            tls=self.tls(),
            inbox_prefix=inbox_prefix(role, agent_id),
        )

    def server_log(self) -> str:
        return "".join(
            node.log_file.read_text(errors="replace")
            for node in self.nodes
            if node.log_file and node.log_file.exists()
        )

    def reload(self) -> None:
        for node in self.nodes:
            node.reload()


def _wait_healthy(nodes: list[EmbeddedNats], within: float = 30.0) -> None:
    """Until every node's full health check passes (JetStream has its meta leader)."""
    deadline = time.monotonic() + within
    for node in nodes:
        url = f"http://{node.host}:{node.monitor_port}/healthz"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not healthy after {within}s")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The compose cluster's shape: three nodes, TLS everywhere, one nkey per identity."""
    root = tmp_path_factory.mktemp("deploy")
    tls_dir = root / "tls"
    ca = pki.make_ca(tls_dir)
    pki.issue_cert(ca, ["localhost", "127.0.0.1"], tls_dir, "server")
    for agent in ("host-a", "host-b", "host-c"):
        creds.issue(root, "agent", agent_id=agent)
    creds.issue(root, "gateway")
    creds.issue(root, "scheduler")
    cluster_ports = {node: free_port() for node in NODES}
    leaf_ports = [free_port() for _ in NODES]
    nodes = [
        EmbeddedNats(
            root / node,
            log_file=root / f"{node}.log",
            config_file=render_cluster_conf(node, root, tls_dir, cluster_ports, leaf_port),
            tls=True,
        )
        for node, leaf_port in zip(NODES, leaf_ports, strict=True)
    ]
    try:
        for node in nodes:
            node.start()
        _wait_healthy(nodes)
        yield Deployment(nodes, root, ca.cert, leaf_ports)
    finally:
        for node in nodes:
            node.stop()


class Errors:
    """The asynchronous errors a connection received (permissions violations)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.disconnected = asyncio.Event()

    async def on_disconnect(self) -> None:
        self.disconnected.set()

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def wait_for(self, fragment: str, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not any(fragment.lower() in e.lower() for e in self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"no error containing {fragment!r}; got {self.seen}")
            await asyncio.sleep(0.02)


async def raw_connect(
    dep: Deployment, name: str, role: Role, agent_id: str | None = None
) -> tuple[Client, Errors]:
    """A connection with its error callback exposed, as an agent host would open it."""
    errors = Errors()
    link = dep.link(name, role, agent_id)
    nc = await nats.connect(
        dep.urls,
        nkeys_seed=str(link.nkey_seed_file),
        tls=link.tls,
        inbox_prefix=link.inbox_prefix or "_INBOX",
        error_cb=errors.record,
        disconnected_cb=errors.on_disconnect,
        allow_reconnect=False,
        connect_timeout=3,
    )
    return nc, errors


async def wait_log(dep: Deployment, pattern: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not re.search(pattern, dep.server_log()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the server log never matched {pattern!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def services(deployment: Deployment) -> AsyncIterator[Client]:
    """The scheduler's identity, having set the streams up as the schedulers do."""
    nc = await connect(
        deployment.url,
        "scheduler",
        link=deployment.link("scheduler", "scheduler"),
        max_reconnect_attempts=1,
    )
    # R3, as the compose cluster runs them.
    await ensure_streams(nc.jetstream(), replicas=3)
    yield nc
    await nc.close()


async def test_agent_cannot_report_as_another_host(
    deployment: Deployment, services: Client
) -> None:
    nc, errors = await raw_connect(deployment, "agent-host-a", "agent", "host-a")
    try:
        await nc.publish(report_subject("host-b", "started"), b"{}")
        await nc.publish(heartbeat_subject("host-b"), b"{}")
        await nc.flush()
        await errors.wait_for(f'publish to "{report_subject("host-b", "started")}"')
        await errors.wait_for(f'publish to "{heartbeat_subject("host-b")}"')
        # Its own report is stored: the refusal is about the subject, not the stream.
        ack = await nc.jetstream().publish(report_subject("host-a", "started"), b"{}")
        assert ack.stream == REPORTS.name
        info = await services.jetstream().stream_info(REPORTS.name, subjects_filter="report.>")
        assert set(info.state.subjects or {}) == {report_subject("host-a", "started")}
    finally:
        await nc.close()
    await wait_log(deployment, r"Publish Violation.*report\.host-b\.started")


async def test_agent_cannot_read_commands_or_another_hosts_runs(deployment: Deployment) -> None:
    nc, errors = await raw_connect(deployment, "agent-host-a", "agent", "host-a")
    try:
        await nc.subscribe("cmd.>")
        await nc.subscribe(agent_run_subject("host-b"))
        await nc.subscribe("_INBOX.>")  # every other process's replies
        await nc.flush()
        await errors.wait_for('subscription to "cmd.>"')
        await errors.wait_for(f'subscription to "{agent_run_subject("host-b")}"')
        await errors.wait_for('subscription to "_INBOX.>"')
        # Its own run subject is open to it.
        own = await nc.subscribe(agent_run_subject("host-a"))
        await nc.flush()
        assert not any(agent_run_subject("host-a") in e for e in errors.seen)
        await own.unsubscribe()
    finally:
        await nc.close()
    await wait_log(deployment, r"Subscription Violation.*cmd\.>")
    await wait_log(deployment, r"Subscription Violation.*agent\.host-b\.run")


async def test_agent_cannot_write_the_log_or_commands(deployment: Deployment) -> None:
    nc, errors = await raw_connect(deployment, "agent-host-a", "agent", "host-a")
    try:
        await nc.publish("evt.task.1.task.completed", b"{}")
        await nc.publish(command_subject("task", "create"), b"{}")
        await nc.publish("$JS.API.STREAM.DELETE.REPORTS", b"")
        await nc.flush()
        await errors.wait_for('publish to "evt.task.1.task.completed"')
        await errors.wait_for('publish to "cmd.task.create"')
        await errors.wait_for('publish to "$JS.API.STREAM.DELETE.REPORTS"')
    finally:
        await nc.close()


async def test_only_the_scheduler_writes_the_log(deployment: Deployment, services: Client) -> None:
    nc, errors = await raw_connect(deployment, "gateway", "gateway")
    try:
        await nc.publish("evt.task.1.task.created", b"{}")
        await nc.flush()
        await errors.wait_for('publish to "evt.task.1.task.created"')
        ack = await nc.jetstream().publish(command_subject("task", "create"), b"{}")
        assert ack.stream == "COMMANDS"
    finally:
        await nc.close()
    ack = await services.jetstream().publish("evt.task.1.task.created", b"{}")
    assert ack.stream == "EVENTS"


async def test_no_credentials_is_refused(deployment: Deployment) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            deployment.urls,
            tls=deployment.tls(),
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=3,
        )
    await wait_log(deployment, r"(?i)authentication error|authorization violation")


async def test_plain_text_is_refused(deployment: Deployment) -> None:
    """A client that will not speak TLS is told so and cut off before authenticating."""
    reader, writer = await asyncio.open_connection("127.0.0.1", deployment.nodes[0].port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert b'"tls_required":true' in info
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
    # The server waits for a TLS handshake, gets none, and hangs up: no PONG, no session.
    assert b"PONG" not in answer
    assert reader.at_eof()


async def test_a_revoked_host_is_cut_off_after_reload(deployment: Deployment) -> None:
    nc, errors = await raw_connect(deployment, "agent-host-c", "agent", "host-c")
    seed = deployment.seed("agent-host-c").read_bytes()
    creds.revoke(deployment.creds_dir, "agent-host-c")
    assert not deployment.seed("agent-host-c").exists()
    deployment.reload()
    await asyncio.wait_for(errors.disconnected.wait(), 10)
    await nc.close()
    # Every try is refused. The server sends its authorization violation and hangs up;
    # now and then the client is still writing its CONNECT when the hang-up arrives and
    # reports the lost connection instead, so the reason is asked of more than one try.
    # Each node re-reads its config on its own SIGHUP: one that has not yet still lets
    # the old key in, so a try that connects is closed and made again.
    refusals: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            late = await nats.connect(
                deployment.urls,
                nkeys_seed_str=seed.decode(),
                tls=deployment.tls(),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                connect_timeout=3,
            )
        except Exception as exc:
            refusals.append(str(exc))
            if re.search(r"(?i)authorization", refusals[-1]):
                break
            continue
        await late.close()
        await asyncio.sleep(0.1)
    assert refusals and re.search(r"(?i)authorization", refusals[-1]), refusals


async def test_streams_are_replicated_three_times_with_limits(services: Client) -> None:
    js = services.jetstream()
    for spec in ALL_STREAMS:
        info = await js.stream_info(spec.name)
        assert isinstance(info.config, StreamConfig)
        assert info.config.num_replicas == 3
        assert info.config.max_bytes == spec.max_bytes > 0
        assert info.config.max_age == spec.max_age_seconds
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2, "a leader and two replicas"


async def test_gateway_scheduler_and_agent_do_their_jobs_with_their_own_identities(
    deployment: Deployment, pg_dsn: str, tmp_path: Path
) -> None:
    """A task created over REST runs on host-a's phone and completes, every process on
    its own identity over TLS: the permissions above are enough for the real work."""
    from fleet_agent.app import Agent
    from fleet_agent.settings import AgentSettings
    from fleet_api.app import create_app
    from fleet_api.settings import ApiSettings
    from fleet_scheduler.app import Scheduler
    from fleet_scheduler.settings import SchedulerSettings

    common: dict[str, Any] = {
        "nats_url": deployment.url,
        "nats_tls_ca_file": deployment.ca,
        "nats_stream_replicas": 3,
    }
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(b"\0" * 64)
    scheduler = Scheduler(
        SchedulerSettings(
            **common,
            nats_nkey_seed_file=deployment.seed("scheduler"),
            database_url=pg_dsn,
            scheduler_id="s1",
        )
    )
    agent = Agent(
        AgentSettings(
            **common,
            nats_nkey_seed_file=deployment.seed("agent-host-a"),
            agent_id="host-a",
            agent_driver="sim",
            agent_sim_devices=2,
            agent_sim_speed=0,
            agent_sim_serial_prefix="trust_a_",
            agent_material_roots=[media],
            agent_heartbeat_seconds=0.5,
        )
    )
    api_settings = ApiSettings(
        **common, nats_nkey_seed_file=deployment.seed("gateway"), api_port=free_port()
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(api_settings),
            host="127.0.0.1",
            port=api_settings.api_port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    # Bounded: a missing permission shows up as retries that never succeed.
    async with asyncio.timeout(45), scheduler, agent:
        serve = asyncio.create_task(server.serve())
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{api_settings.api_port}/api/v1", timeout=15
            ) as client:
                await _until(lambda: server.started, "the gateway to start")
                created = await _until_ok(
                    client,
                    {
                        "serials": ["trust_a_1"],
                        "script_name": "post",
                        "script_config": {"material_list": [str(media / "clip.mp4")]},
                    },
                )
                task_id = created["task_ids"][0]

                async def completed() -> bool:
                    body = (await client.get(f"/task/{task_id}")).json()
                    return bool(body["code"] == 0 and body["data"]["status"] == 2)

                await _until(completed, "the task to complete", within=30)

                # The SSE feed replays the log from EVENTS through the gateway's identity.
                async def first_event_type() -> str:
                    params = {"task_id": task_id, "last_event_id": 0}
                    async with client.stream("GET", "/events", params=params) as resp:
                        assert resp.status_code == 200
                        async for line in resp.aiter_lines():
                            if line.startswith("event:"):
                                return line.removeprefix("event:").strip()
                    return ""

                assert await asyncio.wait_for(first_event_type(), 10) == "task.created"
        finally:
            server.should_exit = True
            await serve
    # The gateway made its buckets bounded and replicated like the streams.
    gateway = await connect(deployment.url, "check", link=deployment.link("gateway", "gateway"))
    try:
        for bucket in (KV_API_KEYS, KV_SCRIPTS):
            info = await gateway.jetstream().stream_info(f"KV_{bucket}")
            assert info.config.num_replicas == 3
            assert info.config.max_bytes == api_settings.nats_kv_max_bytes
    finally:
        await gateway.close()
    ours = ("python3:fleet-api", "python3:scheduler-s1", "python3:fleet-agent-host-a")
    for line in deployment.server_log().splitlines():
        if "Violation" in line and any(name in line for name in ours):
            pytest.fail(f"a service was refused something it needs: {line}")


async def _until(check: Callable[[], object], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _until_ok(client: httpx.AsyncClient, body: dict[str, object]) -> dict[str, Any]:
    """POST the task once the scheduler answers (it may still be joining)."""
    answers: list[dict[str, Any]] = []

    async def accepted() -> bool:
        resp = await client.post("/task", json=body)
        answers.append(resp.json())
        return resp.status_code == 200

    await _until(accepted, f"the create to be accepted (answers: {answers[-1:]})")
    last = answers[-1]
    return dict(last["data"])


LEAF_CONF = ROOT / "deploy" / "nats" / "leaf-agent-host.conf"


@pytest.fixture
def leaf_host_a(deployment: Deployment, tmp_path: Path) -> Iterator[EmbeddedNats]:
    """host-a's leaf node, from deploy/nats/leaf-agent-host.conf: the hub's address and
    the CA path rewritten, the seed given in the environment as the file says."""
    text = LEAF_CONF.read_text()
    hubs = ", ".join(f'"tls://127.0.0.1:{port}"' for port in deployment.leaf_ports)
    text = text.replace('"tls://fleet-nats.example.internal:7422"', hubs)
    text = text.replace("/etc/fleet/tls/ca.pem", str(deployment.ca))
    conf = tmp_path / "leaf.conf"
    conf.write_text(text)
    seed = deployment.seed("agent-host-a").read_text().strip()
    leaf = EmbeddedNats(
        tmp_path / "leaf",
        log_file=tmp_path / "leaf.log",
        config_file=conf,
        environment={"FLEET_LEAF_NKEY_SEED": seed},
    )
    leaf.start()
    yield leaf
    leaf.stop()


async def test_a_leaf_node_carries_only_its_hosts_traffic(
    deployment: Deployment, services: Client, leaf_host_a: EmbeddedNats
) -> None:
    """An agent on host-a's leaf node connects without credentials on loopback; the
    link to the cluster carries host-a's identity, so host-b's subjects stay shut."""
    local = await nats.connect(
        leaf_host_a.url, inbox_prefix=inbox_prefix("agent", "host-a"), connect_timeout=3
    )
    gateway = await connect(deployment.url, "gateway", link=deployment.link("gateway", "gateway"))
    try:

        async def answer_run(msg: Msg) -> None:
            await msg.respond(b"accepted")

        await local.subscribe(agent_run_subject("host-a"), cb=answer_run)
        theirs = await local.subscribe(agent_run_subject("host-b"))
        commands = await local.subscribe("cmd.>")
        await local.flush()

        # A run request reaches host-a through the link and its answer comes back.
        reply = None
        deadline = time.monotonic() + 10
        while reply is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                reply = await services.request(agent_run_subject("host-a"), b"", timeout=0.3)
        assert reply is not None and reply.data == b"accepted"

        # Its own report is stored and acknowledged through the link.
        js = local.jetstream()
        ack = await js.publish(report_subject("host-a", "leaf"), b"{}", timeout=5)
        assert ack.stream == REPORTS.name
        # A report as host-b leaves the leaf node but never enters the cluster.
        await local.publish(report_subject("host-b", "leaf"), b"{}")
        await local.flush()
        await js.publish(report_subject("host-a", "leaf-after"), b"{}", timeout=5)
        info = await services.jetstream().stream_info(REPORTS.name, subjects_filter="report.>")
        stored = set(info.state.subjects or {})
        assert report_subject("host-a", "leaf-after") in stored
        assert report_subject("host-b", "leaf") not in stored

        # Runs for host-b and the gateway's commands stay in the cluster: a run sent to
        # host-a after them arrives, they never do.
        await services.publish(agent_run_subject("host-b"), b"run")
        await gateway.jetstream().publish(command_subject("task", "create"), b"{}")
        marker = await services.request(agent_run_subject("host-a"), b"", timeout=5)
        assert marker.data == b"accepted"
        await local.flush()
        assert theirs.pending_msgs == 0
        assert commands.pending_msgs == 0
    finally:
        await local.close()
        await gateway.close()


async def test_agents_read_the_library_and_keep_evidence_but_never_write_the_library(
    deployment: Deployment,
) -> None:
    from fleet_agent.evidence import Evidence
    from fleet_contracts.materials import ARTIFACTS_BUCKET, MATERIALS_BUCKET, artifact_name
    from fleet_runtime.objects import ChunkUpload, ensure_bucket, live_info, read_chunks

    gateway = await connect(deployment.url, "gateway", link=deployment.link("gateway", "gateway"))
    agent, errors = await raw_connect(deployment, "agent-host-a", "agent", "host-a")
    try:
        for bucket in (MATERIALS_BUCKET, ARTIFACTS_BUCKET):
            await ensure_bucket(gateway.jetstream(), bucket, replicas=3)
        media = bytes(range(256)) * 1500  # a few chunks
        upload = ChunkUpload(gateway.jetstream(), MATERIALS_BUCKET)
        await upload.write(media)
        stored = await upload.commit()

        # The agent's cache reads the library...
        info = await live_info(agent.jetstream(), MATERIALS_BUCKET, stored.sha256)
        assert info is not None
        assert b"".join([c async for c in read_chunks(agent.jetstream(), info)]) == media
        # ...keeps a failed step's evidence...
        kept = await Evidence(agent.jetstream(), retention_hours=1).keep(7, "d7", None, "<ui/>")
        assert kept == [artifact_name(7, "d7", "hierarchy.xml")]
        # ...and cannot add to or purge the library.
        await agent.publish(f"$O.{MATERIALS_BUCKET}.M.Zm9v", b"{}")
        await agent.publish(f"$JS.API.STREAM.PURGE.OBJ_{MATERIALS_BUCKET}", b"{}")
        await agent.flush()
        await errors.wait_for(f'publish to "$O.{MATERIALS_BUCKET}.M.Zm9v"')
        await errors.wait_for(f'publish to "$JS.API.STREAM.PURGE.OBJ_{MATERIALS_BUCKET}"')
    finally:
        await agent.close()
        await gateway.close()


async def test_a_query_answer_in_parts_passes_between_the_real_identities(
    deployment: Deployment, services: Client
) -> None:
    """A query answer over max_payload travels in parts (`fleet_runtime.replies`): the
    scheduler's identity may publish every part to the gateway's inbox."""
    answer = b"x" * (3 * services.max_payload)

    async def answer_query(msg: Msg) -> None:
        await replies.respond(services, msg.reply, answer)

    await services.subscribe("query.task.list", queue="schedulers", cb=answer_query)
    await services.flush()
    gateway, errors = await raw_connect(deployment, "gateway", "gateway")
    try:
        got: list[bytes] = []

        async def answered() -> bool:
            # The subscription reaches the gateway's node through the cluster a moment
            # after the flush: until then the request finds no responders.
            with contextlib.suppress(nats.errors.NoRespondersError):
                got.append(await replies.request(gateway, "query.task.list", b"{}", 10))
            return bool(got)

        await _until(answered, "the answer in parts")
        assert got == [answer]
        assert not errors.seen
    finally:
        await gateway.close()
