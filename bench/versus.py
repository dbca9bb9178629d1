"""The whole system beside its peer and beside itself: ratios, all from one `make bench`.

After the whole-system run, the Celery + Redis peer does the same number of zero-length
tasks with 16 worker threads; then the end-to-end flood runs again on a fresh stack with
two schedulers. Each figure is printed with its ratio to ours, measured minutes apart on
the same machine.
"""

from __future__ import annotations

from bench import system
from bench.cputime import ratio, times
from bench.peers import celery_redis
from bench.system import Result, Row, Scale


async def run(ours: Result, scale: Scale = system.BIG) -> list[Row]:
    rows = await _beside_peer(ours)
    two = await system.e2e(scale, schedulers=2)
    one = ours.flood
    rows += [
        (
            "end to end, two schedulers",
            f"{two.rate:,.0f} tasks/s",
            f"{len(two.ids)} tasks ({two.completed} completed, {two.failed} failed), "
            f"fresh stack, both schedulers on this machine",
        ),
        (
            "two schedulers / one",
            times(ratio(two.rate, one.rate)),
            f"{two.rate:,.0f} vs {one.rate:,.0f} tasks/s",
        ),
        system.cpu_row(two, "CPU per task lifecycle, two schedulers"),
    ]
    return rows


async def _beside_peer(ours: Result) -> list[Row]:
    flood = ours.flood
    try:
        peer = await celery_redis.run(len(flood.ids))
    except RuntimeError as exc:  # no Redis and no way to install it here
        return [("Celery + Redis", "not run", str(exc))]
    return [
        *celery_redis.rows(peer),
        (
            "end to end: ours / Celery + Redis",
            times(ratio(flood.rate, peer.rate)),
            f"{flood.rate:,.0f} vs {peer.rate:,.0f} tasks/s, {len(flood.ids)} tasks each"
            f"{f' ({flood.failed} of ours failed)' if flood.failed else ''}; "
            "goal >= 3 x, aim 5 x",
        ),
        (
            "CPU per task: ours / Celery + Redis",
            times(ratio(flood.cpu_per_task, peer.cpu_per_task)),
            f"{flood.cpu_per_task * 1000:.2f} vs {peer.cpu_per_task * 1000:.2f} ms, "
            "every process of each side",
        ),
    ]
