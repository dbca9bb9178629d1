"""Every metric the gateway exports, served at `/metrics` on the API's own port.

Requests are counted and timed by prometheus-fastapi-instrumentator, labelled by the
route's template (`/api/v1/task/{task_id:task_id}`, never the raw path; paths that match no
route are `none`), the method and the exact HTTP status. The NATS connection counters
and process metrics come from `fleet_runtime.metrics`. `/metrics` needs no API key, like
`/healthz`: it says how busy the gateway is, nothing about any task.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as instruments

from fleet_runtime.metrics import exported_names, service_registry

PATH = "/metrics"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def install(app: FastAPI) -> CollectorRegistry:
    """Instrument `app` and add `GET /metrics`; returns the registry it serves."""
    registry = service_registry([])
    instrumentator = Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=[PATH],
        registry=registry,
    )
    instrumentator.add(
        instruments.requests(
            metric_namespace="fleet",
            metric_subsystem="api",
            metric_doc="HTTP requests answered, by route template, method and status.",
            registry=registry,
        ),
        instruments.latency(
            metric_namespace="fleet",
            metric_subsystem="api",
            metric_doc="Time to answer an HTTP request, by route template, method and status"
            " (an SSE stream counts until it closes).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
    )
    instrumentator.instrument(app).expose(app, endpoint=PATH, include_in_schema=False)
    return registry


def exported() -> set[str]:
    """Every series name the gateway exports."""
    return exported_names(install(FastAPI()))
