"""The lease handover after a SIGKILL: two schedulers share the partitions, a flood is
created, one scheduler is killed mid-flood; measured: how long until the survivor holds
every partition (on the database's clock, polled every 20 ms), how long the flood's
completions stalled around the kill, and that every task still completed.

`python -m bench.handover [devices] [tasks]` runs it alone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

from bench import system
from bench.scratch import scratch
from bench.system import Client, Row, Scale
from fleet_scheduler.migrate import installed_partitions
from fleet_scheduler.partition_owners import holders

POLL_SECONDS = 0.02


async def _until(conn: asyncpg.Connection, owners: set[str], partitions: int) -> float:
    """Seconds until the live leases cover every partition and only `owners` hold them."""
    start = time.perf_counter()
    while True:
        held = await holders(conn)
        if len(held) == partitions and set(held.values()) == owners:
            return time.perf_counter() - start
        await asyncio.sleep(POLL_SECONDS)


async def _completions(client: Client, total: int) -> tuple[float, int, dict[str, int]]:
    """Poll completions until `total` ended: (longest time without one, polls refused,
    the final stats). A poll can be refused: a query in flight to the scheduler being
    killed goes unanswered, and the gateway answers 503 once its query timeout runs out."""
    last_change = time.perf_counter()
    longest, last, refused = 0.0, -1, 0
    while True:
        try:
            stats: dict[str, int] = await client.call("GET", "/task/stats")
        except RuntimeError:
            refused += 1
            continue
        ended = stats["completed"] + stats["failed"]
        now = time.perf_counter()
        if ended != last:
            longest, last, last_change = max(longest, now - last_change), ended, now
        if ended >= total:
            return longest, refused, stats
        await asyncio.sleep(POLL_SECONDS)


def flood_size(scale: Scale) -> int:
    return max(scale.e2e_tasks // 4, 100)


async def run(scale: Scale = system.BIG, data_dir: Path | None = None) -> list[Row]:
    async with scratch("fleet-bench-handover-", data_dir) as root:
        return await _run(scale, root)


async def _run(scale: Scale, root: Path) -> list[Row]:
    stack, media = system.bench_stack(root, scale.devices, schedulers=2, metrics=False)
    tasks = flood_size(scale)
    async with system.running(stack):
        serials = [f"device_serial_{i}" for i in range(1, scale.devices + 1)]
        conn = await asyncpg.connect(stack.database_url)
        try:
            partitions = await installed_partitions(conn)
            names = {"scheduler-1", "scheduler-2"}
            shared = await asyncio.wait_for(_until(conn, names, partitions), 60)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
                client = Client(s, stack.api_url)
                await system.devices_online(client, scale.devices)
                quick = {"material_list": [str(media)], "upload_wait_time": 0}
                ids, _ = await system._create_many(client, serials, tasks, quick)
                watch = asyncio.ensure_future(_completions(client, len(ids)))
                await asyncio.sleep(0.2)  # mid-flood
                killed_at = time.perf_counter()
                await asyncio.to_thread(stack.schedulers[1].kill)
                await asyncio.wait_for(_until(conn, {"scheduler-1"}, partitions), 60)
                moved = time.perf_counter() - killed_at
                stall, refused, stats = await watch
        finally:
            await conn.close()
    lease = "5 s"  # FLEET_SCHEDULER_PARTITION_LEASE_SECONDS, the default
    return [
        (
            "two schedulers share the partitions",
            f"{shared:.2f} s",
            f"start -> {partitions} partitions leased between both (fresh stack)",
        ),
        (
            "lease handover after a SIGKILL",
            f"{moved:.2f} s",
            f"kill -> the survivor holds all {partitions} partitions; lease {lease}, "
            "renewed every quarter of it",
        ),
        (
            "flood around the kill",
            f"{stats['completed']} completed, {stats['failed']} failed",
            f"{len(ids)} tasks on {scale.devices} sim devices; longest pause between "
            f"completions {stall:.2f} s; stats polls refused (a query in flight to the "
            f"killed scheduler): {refused}",
        ),
    ]


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    scale = Scale(devices=args[0] if args else 1000, e2e_tasks=4 * (args[1] if args[1:] else 5000))
    print(system.table("Lease handover", asyncio.run(run(scale))))
