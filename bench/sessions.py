"""Device sessions measured on the whole stack (every service a process), over REST:
lease + release round trip, a UIAutomator2 call (`deviceInfo`) on a leased phone, the UI
tree, and a 1.4 MB screenshot streamed through NATS in pieces. Sequential calls, one
client: latency, not throughput under contention.

`python -m bench.sessions [samples]` prints the table; `make bench` includes it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench.scratch import scratch
from bench.system import Client, Row, pct, running, table
from fleet_devstack import free_port
from fleet_devstack.stack import AgentSpec, Stack, StackConfig

SERIAL = "device_serial_1"


async def _timed(samples: int, step: Callable[[], Awaitable[Any]]) -> list[float]:
    took: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        await step()
        took.append((time.perf_counter() - start) * 1000)
    return took


def _row(name: str, ms: list[float], note: str) -> Row:
    return (name, f"p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms", note)


async def _measure(stack: Stack, samples: int) -> list[Row]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        client = Client(session, stack.api_url)
        for _ in range(600):
            if len(await client.call("GET", "/rpc/devices")) >= 1:
                break
            await asyncio.sleep(0.1)

        async def lease_release() -> None:
            data = await client.call("POST", "/rpc/session", json={"serial": SERIAL})
            await client.call("DELETE", f"/rpc/session/{data['session_id']}")

        rows = [_row("lease + release", await _timed(samples, lease_release), "two commands")]
        sid = (await client.call("POST", "/rpc/session", json={"serial": SERIAL}))["session_id"]
        headers = {"x-session-id": sid}
        body = {"serial": SERIAL, "method": "deviceInfo", "params": []}

        async def device_info() -> None:
            await client.call("POST", "/rpc/jsonrpc", json=body, headers=headers)

        rows.append(_row("jsonrpc deviceInfo", await _timed(samples, device_info), "sim phone"))
        size = 0

        async def fetch(kind: str) -> None:
            nonlocal size
            url = f"{client.base}/rpc/{kind}"
            async with session.get(url, params={"serial": SERIAL}, headers=headers) as resp:
                size = len(await resp.read())

        rows.append(_row("hierarchy (XML)", await _timed(samples, lambda: fetch("hierarchy")), ""))
        shots = await _timed(samples, lambda: fetch("screenshot"))
        rows.append(_row("screenshot (PNG)", shots, f"{size / 1e6:.1f} MB in NATS pieces"))
        rows.append(("screenshot rate", f"{size / 1e6 / (pct(shots, 0.5) / 1000):.0f} MB/s", ""))
        return rows


async def run(samples: int = 50) -> list[Row]:
    async with scratch("fleet-bench-sessions-") as root:
        stack = Stack(
            StackConfig(
                data_dir=root / "stack",
                api_port=free_port(),
                durable_postgres=False,
                agents=[AgentSpec(agent_id="bench", sim_devices=4, sim_speed=0.0)],
                env={"FLEET_LOG_LEVEL": "WARNING"},
            )
        )
        async with running(stack):
            return await _measure(stack, samples)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    print(table("Device sessions", asyncio.run(run(count))))
