"""The whole system as separate processes: what `make run` starts and e2e tests drive.

NATS and PostgreSQL come from `servers`; the gateway, the scheduler(s) and the agent(s)
run as `python -m <package>` children with their configuration in environment variables,
exactly as a deployment runs them. Each child can be stopped, SIGKILLed and started
again, which is what the fault tests need.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fleet_devstack.servers import (
    EmbeddedNats,
    EmbeddedPostgres,
    end_process,
    free_port,
    port_or_free,
)

LineSink = Callable[[str, str], None]


class ServiceProcess:
    """One service child process; its output goes to a log file and, optionally, a sink."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_file: Path,
        sink: LineSink | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_file = log_file
        self.sink = sink
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self.metrics_url: str | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Ctrl-C reaches the supervisor alone, which then stops services in order
            # (agents first, NATS last); otherwise NATS would go before the agents could
            # report the runs they end.
            start_new_session=True,
        )
        self._pump = threading.Thread(
            target=self._copy_output, args=(self.proc.stdout,), daemon=True
        )
        self._pump.start()

    def _copy_output(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with self.log_file.open("ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                if self.sink is not None:
                    self.sink(self.name, raw.decode(errors="replace").rstrip("\n"))

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        code = end_process(self.proc, signal.SIGTERM, timeout)
        self._join()
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up, as in a crash."""
        if self.proc is not None:
            end_process(self.proc, signal.SIGKILL, 5)
        self._join()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its connections but answers nothing, like a host
        behind a stalled network."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def _join(self) -> None:
        if self._pump is not None:
            self._pump.join(5)
            self._pump = None

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@dataclass
class AgentSpec:
    agent_id: str
    sim_devices: int = 8
    sim_speed: float = 1.0
    driver: str = "sim"
    env: dict[str, str] = field(default_factory=dict)
    # Run inside this network namespace (a test "host"), reaching NATS at `nats_url`.
    netns: str | None = None
    nats_url: str | None = None


@dataclass
class StackConfig:
    data_dir: Path
    api_host: str = "127.0.0.1"
    api_port: int = 50809
    nats_port: int | None = None
    pg_port: int | None = None
    durable_postgres: bool = True
    schedulers: int = 1
    agents: list[AgentSpec] = field(default_factory=lambda: [AgentSpec(agent_id="local")])
    env: dict[str, str] = field(default_factory=dict)
    database: str = "fleet"
    nats_bind: str | None = None
    # Each scheduler and agent serves /metrics on a port of its own: free ones, or the
    # defaults (9465 scheduler, 9466 agent) where free when `default_metrics_ports`.
    metrics: bool = True
    default_metrics_ports: bool = False


class Stack:
    """NATS, PostgreSQL, gateway, scheduler(s) and agent(s) on this machine."""

    def __init__(self, config: StackConfig, sink: LineSink | None = None) -> None:
        self.config = config
        self.sink = sink
        root = config.data_dir
        self.logs = root / "logs"
        self.nats = EmbeddedNats(
            root / "nats",
            port=config.nats_port,
            log_file=self.logs / "nats.log",
            bind=config.nats_bind,
        )
        self.postgres = EmbeddedPostgres(
            root / "postgres",
            port=config.pg_port,
            log_file=self.logs / "postgres.log",
            durable=config.durable_postgres,
        )
        self.api: ServiceProcess | None = None
        self.schedulers: list[ServiceProcess] = []
        self.agents: dict[str, ServiceProcess] = {}
        self._metrics_ports: set[int] = set()

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api_host}:{self.config.api_port}"

    @property
    def database_url(self) -> str:
        return self.postgres.dsn_for(self.config.database)

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FLEET_") or k == "FLEET_LOG_FORMAT"
        }
        env.update(
            {
                "FLEET_NATS_URL": self.nats.url,
                "FLEET_DATABASE_URL": self.database_url,
                "FLEET_API_HOST": self.config.api_host,
                "FLEET_API_PORT": str(self.config.api_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if not self.config.metrics:
            env.update(
                {
                    "FLEET_METRICS_ENABLED": "false",
                    "FLEET_SCHEDULER_METRICS_PORT": "0",
                    "FLEET_AGENT_METRICS_PORT": "0",
                }
            )
        env.update(self.config.env)
        return env

    def _with_metrics(self, svc: ServiceProcess, setting: str, preferred: int) -> None:
        """Give `svc` a metrics port of its own (none when metrics are off)."""
        if not self.config.metrics or setting in self.config.env:
            return
        port = port_or_free(preferred) if self.config.default_metrics_ports else free_port()
        while port in self._metrics_ports:
            port = free_port()
        self._metrics_ports.add(port)
        svc.env[setting] = str(port)
        svc.metrics_url = f"http://127.0.0.1:{port}/metrics"

    def metrics_urls(self) -> dict[str, str]:
        """Where each running service serves its metrics, by service name."""
        urls = {s.name: s.metrics_url for s in self.services() if s.metrics_url}
        if self.config.metrics and self.api is not None:
            urls[self.api.name] = f"{self.api_url}/metrics"
        return urls

    def _service(self, name: str, module: str, extra: Mapping[str, str]) -> ServiceProcess:
        env = {**self.base_env(), **extra}
        return ServiceProcess(
            name, [sys.executable, "-m", module], env, self.logs / f"{name}.log", self.sink
        )

    def start_infrastructure(self) -> None:
        self.nats.start()
        self.postgres.start()
        exists = self.postgres.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{self.config.database}'"
        )
        if not exists.strip():
            self.postgres.create_database(self.config.database)

    def start_services(self) -> None:
        for i in range(self.config.schedulers):
            sched = self._service(
                f"scheduler-{i + 1}" if self.config.schedulers > 1 else "scheduler",
                "fleet_scheduler",
                {"FLEET_SCHEDULER_ID": f"scheduler-{i + 1}"},
            )
            self._with_metrics(sched, "FLEET_SCHEDULER_METRICS_PORT", 9465)
            sched.start()
            self.schedulers.append(sched)
        for spec in self.config.agents:
            self.start_agent(spec)
        self.api = self._service("api", "fleet_api", {})
        self.api.start()

    def start_agent(self, spec: AgentSpec) -> ServiceProcess:
        agent = self._service(
            f"agent-{spec.agent_id}" if len(self.config.agents) > 1 else "agent",
            "fleet_agent",
            {
                "FLEET_AGENT_ID": spec.agent_id,
                "FLEET_AGENT_HOST": spec.agent_id,
                "FLEET_AGENT_DRIVER": spec.driver,
                "FLEET_AGENT_SIM_DEVICES": str(spec.sim_devices),
                "FLEET_AGENT_SIM_SPEED": str(spec.sim_speed),
                # Where custom scripts started on this host reach the gateway.
                "FLEET_AGENT_API_BASE": self.api_url,
                **({"FLEET_NATS_URL": spec.nats_url} if spec.nats_url else {}),
                **spec.env,
            },
        )
        if spec.netns:
            agent.argv = ["ip", "netns", "exec", spec.netns, *agent.argv]
            agent.env.setdefault("FLEET_AGENT_METRICS_PORT", "0")  # not reachable from here
        else:
            self._with_metrics(agent, "FLEET_AGENT_METRICS_PORT", 9466)
        agent.start()
        self.agents[spec.agent_id] = agent
        return agent

    def services(self) -> list[ServiceProcess]:
        return [*self.agents.values(), *self.schedulers, *([self.api] if self.api else [])]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the gateway's /readyz says NATS and a scheduler answer."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for svc in self.services():
                if svc.proc is not None and svc.proc.poll() is not None:
                    raise RuntimeError(
                        f"{svc.name} exited with {svc.proc.returncode}:\n{svc.output()[-4000:]}"
                    )
            try:
                with urllib.request.urlopen(f"{self.api_url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"{exc.code} {exc.read()[:300]!r}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"stack not ready after {timeout}s (last /readyz: {last})")

    def stop(self) -> None:
        """Agents, then schedulers, then the gateway, then the servers."""
        for svc in self.services():
            with contextlib.suppress(Exception):
                svc.stop()
        for server in (self.postgres, self.nats):
            with contextlib.suppress(Exception):
                server.stop()

    @contextlib.contextmanager
    def running(self, ready_timeout: float = 60.0) -> Iterator[Stack]:
        try:
            self.start_infrastructure()
            self.start_services()
            self.wait_ready(ready_timeout)
            yield self
        finally:
            self.stop()
