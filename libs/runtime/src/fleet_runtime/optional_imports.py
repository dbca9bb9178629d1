"""Optional packages our libraries import just in case: loaded on first use, or not at all.

Whenever they are installed, nats-py imports aiohttp (for its WebSocket transport) and
structlog imports rich (for coloured tracebacks on a terminal). The workspace installs
both (the benchmarks use aiohttp, the CLI rich), and together they were about a third of
a scheduler's import time, which every restart pays whatever the size of the log. A
service reaches NATS over TCP and, off a terminal, writes JSON lines, so it uses neither.

`trim()` runs first in each service package: nats-py is imported with aiohttp out of
its sight (`fleet_runtime.bus.connect` hands it back for a `ws://` or `wss://` server,
the only use nats-py has for it), and when the logs will be JSON lines structlog is
imported with rich out of its sight (rich only ever served structlog's console
renderer). On a terminal structlog keeps rich. A lazily executed module
(`importlib.util.LazyLoader`) would not do: on Python 3.11 the `import` statement itself
reads the module's `__spec__` and so executes it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys


def json_lines(json: bool | None = None) -> bool:
    """Whether the logs are JSON lines: FLEET_LOG_FORMAT (json / console) decides, then
    `json`, then whether stderr is a terminal (JSON when it is not)."""
    chosen = os.environ.get("FLEET_LOG_FORMAT")
    if chosen in ("json", "console"):
        return chosen == "json"
    return (not sys.stderr.isatty()) if json is None else json


def import_without(name: str, hidden: str) -> None:
    """Import `name` as if `hidden` were not installed; `hidden` stays importable after.

    Nothing when `name` is loaded already (too late) or `hidden` is (hiding saves nothing).
    """
    if name in sys.modules or hidden in sys.modules:
        return
    sys.modules[hidden] = None  # type: ignore[assignment]  # `import hidden` raises ImportError
    try:
        importlib.import_module(name)
    finally:
        del sys.modules[hidden]


def nats_websockets() -> None:
    """Give nats-py the aiohttp `trim` hid from it (a `ws://` or `wss://` server needs it);
    when aiohttp is not installed nats-py says so itself, as it would have anyway."""
    from nats.aio import transport

    if getattr(transport, "aiohttp", None) is None:
        with contextlib.suppress(ImportError):
            import aiohttp

            # nats-py does not export the name; it reads it when making a WebSocket.
            setattr(transport, "aiohttp", aiohttp)  # noqa: B010


def trim() -> None:
    """What a service process calls before its other imports (see the module's text)."""
    import_without("nats", hidden="aiohttp")
    if json_lines():
        import_without("structlog", hidden="rich")
