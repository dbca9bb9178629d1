"""What the full-stack tests share: a REST client that speaks the envelope, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

# Short leases and fast heartbeats so faults show within seconds; everything else is
# the services' defaults.
FAST_TIMINGS = {
    "FLEET_SCHEDULER_AGENT_LEASE_SECONDS": "3",
    "FLEET_SCHEDULER_START_TIMEOUT_SECONDS": "6",
    "FLEET_SCHEDULER_DISPATCH_POLL_SECONDS": "0.2",
    "FLEET_AGENT_HEARTBEAT_SECONDS": "0.5",
    "FLEET_API_COMMAND_TIMEOUT_SECONDS": "5",
    "FLEET_API_QUERY_TIMEOUT_SECONDS": "2",
    "FLEET_LOG_FORMAT": "json",
}


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1, what: str
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | Exception | None = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.TransportError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def post(video: str, wait: int = 0, **extra: Any) -> dict[str, Any]:
    """A `post` script_config for one existing video, waiting `wait` s for the upload."""
    return {"content_type": 0, "material_list": [video], "upload_wait_time": wait, **extra}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Api:
    """The REST API as a client written for TikMatrix sees it."""

    def __init__(self, base_url: str, key: str | None = None, timeout: float = 15.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=f"{base_url}/api/v1", timeout=timeout, headers=headers)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        resp = self.http.request(method, path, **kwargs)
        body = resp.json()
        assert set(body) >= {"code", "message", "data"}, body
        return resp.status_code, body

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = self.call(method, path, **kwargs)
        assert status == 200 and body["code"] == 0, (status, body)
        return body["data"]

    def create(self, **body: Any) -> list[int]:
        body.setdefault("script_name", "post")
        body.setdefault("script_config", {})
        data = self.ok("POST", "/task", json=body)
        assert data["created_count"] == len(data["task_ids"])
        return list(data["task_ids"])

    def task(self, task_id: int) -> dict[str, Any]:
        return dict(self.ok("GET", f"/task/{task_id}"))

    def history(self, task_id: int) -> list[str]:
        return [e["type"] for e in self.ok("GET", f"/task/{task_id}/events")]

    def wait_status(self, task_id: int, status: int, timeout: float = 30.0) -> dict[str, Any]:
        return wait_until(
            lambda: (t := self.task(task_id))["status"] == status and t,
            timeout=timeout,
            what=f"task {task_id} to reach status {status}",
        )

    def wait_devices(self, count: int) -> list[dict[str, Any]]:
        """The device list once it holds `count` online phones.

        A ready gateway means a scheduler answers, not that the scheduler has read
        every agent's first device report yet.
        """

        def listed() -> list[dict[str, Any]] | None:
            devices: list[dict[str, Any]] = self.ok("GET", "/device")["devices"]
            return devices if sum(d["online"] for d in devices) >= count else None

        return wait_until(listed, what=f"{count} online devices")

    def wait_all_done(self, ids: list[int], timeout: float = 60.0) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            tasks = [self.task(i) for i in ids]
            return tasks if all(t["status"] in (2, 3) for t in tasks) else None

        return wait_until(done, timeout=timeout, interval=0.25, what=f"tasks {ids} to finish")

    def close(self) -> None:
        self.http.close()
