"""The gateway as the CLI sees it: envelope in, `data` out, errors as `GatewayError`
with the gateway's own code and message; the event stream with automatic resume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from fleet_cli.sse import ServerEvent, parse

DEFAULT_URL = "http://127.0.0.1:50809"
RECONNECT_SECONDS = (0.5, 1, 2, 5)


class GatewayError(Exception):
    """The gateway answered with an error envelope (or not with an envelope at all)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No answer from the gateway at all."""


class Gateway:
    def __init__(
        self,
        url: str,
        key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"X-API-Key": key} if key else {}
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(
                method, path, params=query, json=body, headers=headers or {}
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the gateway at {self.url}: {exc}") from exc
        try:
            envelope = response.json()
        except ValueError:
            raise GatewayError(
                response.status_code,
                response.status_code * 100,
                f"HTTP {response.status_code}: {response.text[:200]}",
            ) from None
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise GatewayError(response.status_code, 50001, f"not an envelope: {envelope!r}")
        if response.status_code >= 400 or envelope["code"] != 0:
            raise GatewayError(response.status_code, envelope["code"], envelope["message"])
        return envelope.get("data")

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def every(self, path: str, field: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list that answers either a bare list or a page
        `{<field>: [...], total, page, page_size}`, fetching page after page."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self.get(path, page=page, page_size=100, **params)
            if isinstance(data, list):
                return data
            chunk = data.get(field) or []
            items.extend(chunk)
            if not chunk or len(items) >= int(data.get("total", len(items))):
                return items
            page += 1

    def events(
        self, params: dict[str, Any], after: str | None = None
    ) -> Iterator[ServerEvent | None]:
        """The event stream for ever: a dropped connection is resumed after the last id
        seen (Last-Event-ID), so nothing is missed or repeated across reconnects. None
        comes each time the stream (re)opens: the gateway is subscribed from then on."""
        last = after
        failures = 0
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self.http.stream(
                    "GET",
                    "/events",
                    params=query,
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=None),
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        try:
                            envelope = response.json()
                            raise GatewayError(
                                response.status_code, envelope["code"], envelope["message"]
                            )
                        except (ValueError, KeyError):
                            raise GatewayError(
                                response.status_code,
                                response.status_code * 100,
                                f"HTTP {response.status_code}",
                            ) from None
                    failures = 0
                    yield None
                    for event in parse(response.iter_lines()):
                        if event.id is not None:
                            last = event.id
                        yield event
            except (httpx.TransportError, httpx.StreamError) as exc:
                failures += 1
                if failures > len(RECONNECT_SECONDS) * 3:
                    raise Unreachable(
                        f"the event stream at {self.url} keeps failing: {exc}"
                    ) from exc
            time.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])


def envelope_of(event: ServerEvent) -> dict[str, Any]:
    """The EventEnvelope an event stream entry carries (type, data, recorded_at …)."""
    parsed = json.loads(event.data)
    return parsed if isinstance(parsed, dict) else {"type": event.event, "data": parsed}
