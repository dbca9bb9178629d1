"""The Celery + Redis peer: the end-to-end scenario's work done the afternoon way.

N zero-length tasks go through a Celery worker with 16 threads (`--pool threads
--concurrency 16`), Redis as broker and result store; the rate is from the first enqueue
to the last result read back. Three processes, each a child of the bench so its CPU time
can be read: `redis-server`, the worker, and the producer (this module run as
`python -m bench.peers.celery_redis produce N`), which enqueues with `delay()` and waits
on every result with `ResultSet.join_native` (Redis pub/sub, no polling).

The producer first proves the worker consumes (one task there and back), says `ready`,
and starts only when told `go`, so the CPU window of every process is the flood alone.

`python -m bench.peers.celery_redis [N]` runs the peer alone and prints its table.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from celery.result import ResultSet

from bench import proc
from bench.cputime import per_task, spent_seconds
from bench.peers.redis_server import RedisServer
from bench.scratch import scratch

URL_ENV = "BENCH_PEER_REDIS_URL"
THREADS = 16

Row = tuple[str, str, str]

# Defaults throughout but the URLs: what a user gets from the Celery tutorial.
app = Celery(
    "bench_peer",
    broker=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"),
    backend=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"),
)
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """The zero-length script."""


@dataclass(frozen=True)
class PeerResult:
    tasks: int
    enqueue_seconds: float
    seconds: float
    cpu_seconds: dict[str, float]  # redis-server, worker, producer: over the flood

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def enqueue_rate(self) -> float:
        return self.tasks / self.enqueue_seconds

    @property
    def cpu_per_task(self) -> float:
        return per_task(sum(self.cpu_seconds.values()), self.tasks)


def produce(tasks: int) -> dict[str, float]:
    """The producer's side, in its own process: enqueue `tasks` no-ops, wait for every
    result; seconds and its own CPU seconds over that span."""
    noop.delay().get(timeout=120)  # the worker is up and consuming
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")
    cpu0, start = time.process_time(), time.perf_counter()
    results = [noop.delay() for _ in range(tasks)]
    enqueued = time.perf_counter()
    ResultSet(results).join_native(timeout=3600)
    end = time.perf_counter()
    return {
        "enqueue_seconds": enqueued - start,
        "seconds": end - start,
        "cpu_seconds": time.process_time() - cpu0,
    }


async def run(tasks: int, workdir: Path | None = None) -> PeerResult:
    """Start Redis and a 16-thread worker, flood them with `tasks` no-ops, stop both."""
    async with scratch("fleet-bench-peer-", workdir) as root:
        return await _run(tasks, root)


async def _run(tasks: int, root: Path) -> PeerResult:
    redis = RedisServer(root / "redis")
    await asyncio.to_thread(redis.start)
    env = {**os.environ, URL_ENV: redis.url, "PYTHONUNBUFFERED": "1"}
    worker_log = (root / "worker.log").open("wb")
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "celery", "-A", "bench.peers.celery_redis", "worker"],
        *["--pool", "threads", "--concurrency", str(THREADS), "--loglevel", "WARNING"],
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=worker_log,
        stderr=worker_log,
    )
    producer = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bench.peers.celery_redis", "produce", str(tasks)],
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert producer.stdin is not None and producer.stdout is not None
        line = await asyncio.wait_for(producer.stdout.readline(), 180)
        if line.strip() != b"ready":
            log = (root / "worker.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"peer producer did not start: {line!r}; worker log:\n{log}")
        groups = {"redis-server": [redis.pid], "worker": [worker.pid]}
        before = proc.ticks(groups)
        producer.stdin.write(b"go\n")
        await producer.stdin.drain()
        out = json.loads(await producer.stdout.readline())
        after = proc.ticks(groups)
        await producer.wait()
    finally:
        for child in (producer, worker):
            if child.returncode is None:
                child.terminate()
                try:
                    await asyncio.wait_for(child.wait(), 30)
                except TimeoutError:
                    child.kill()
                    await child.wait()
        worker_log.close()
        await asyncio.to_thread(redis.stop)
    cpu = {n: spent_seconds(before[n], after[n], proc.TICKS_PER_SECOND) for n in groups}
    cpu["producer"] = out["cpu_seconds"]
    return PeerResult(
        tasks=tasks,
        enqueue_seconds=out["enqueue_seconds"],
        seconds=out["seconds"],
        cpu_seconds=cpu,
    )


def rows(result: PeerResult) -> list[Row]:
    shares = ", ".join(
        f"{name} {per_task(s, result.tasks) * 1000:.2f}" for name, s in result.cpu_seconds.items()
    )
    return [
        (
            f"Celery + Redis: end to end, {THREADS} worker threads",
            f"{result.rate:,.0f} tasks/s",
            f"{result.tasks} zero-length tasks, first enqueue -> last result "
            f"in {result.seconds:.1f} s",
        ),
        (
            "Celery + Redis: enqueue",
            f"{result.enqueue_rate:,.0f} tasks/s",
            "delay() one by one, one producer",
        ),
        (
            "Celery + Redis: CPU per task, all its processes",
            f"{result.cpu_per_task * 1000:.2f} ms",
            f"ms per task: {shares}",
        ),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        print(json.dumps(produce(int(sys.argv[2]))), flush=True)
    else:
        from bench.system import table

        count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
        print(table("Celery + Redis", rows(asyncio.run(run(count)))))
