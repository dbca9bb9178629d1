"""structlog, set up once per process.

JSON lines when stderr is not a terminal (containers, CI, log shippers), coloured
console lines on one; FLEET_LOG_FORMAT=json|console overrides (`optional_imports.
json_lines`, which also keeps rich out of a process logging JSON). The correlation id is
bound with `bind_correlation` (contextvars), so every line written while a request or
command is handled carries it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from fleet_runtime.optional_imports import json_lines


def configure(service: str, level: str = "INFO", json: bool | None = None) -> None:
    use_json = json_lines(json)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if use_json:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (uvicorn, nats, asyncpg) log through the stdlib: send them the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


@contextmanager
def bind_correlation(correlation_id: str | None, **extra: Any) -> Iterator[None]:
    """Bind the correlation id (and extra keys) for the lines logged inside the block."""
    values = {"correlation_id": correlation_id, **extra}
    with structlog.contextvars.bound_contextvars(**values):
        yield
