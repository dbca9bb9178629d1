"""What every service's metrics share: the NATS connection counters, a registry per
service, and the small HTTP server that exposes a registry on a port of its own.

Each service defines its own metrics in its own `metrics.py`; this module only holds
the parts they have in common. A service builds one `CollectorRegistry` with
`service_registry` (process metrics and the NATS counters included), adds its own
collectors, and serves it with `serve` (scheduler, agent) or from its web app (gateway).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)


NATS_RECONNECTS = Counter(
    "fleet_nats_reconnects_total",
    "Times this process's NATS connection came back after a disconnect.",
    registry=None,
)
NATS_DISCONNECTS = Counter(
    "fleet_nats_disconnects_total",
    "Times this process's NATS connection was lost.",
    registry=None,
)

SHARED: tuple[MetricWrapperBase, ...] = (NATS_RECONNECTS, NATS_DISCONNECTS)
"""Defined once per process and registered in the service's registry."""


def service_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry holding process metrics, the shared NATS counters and `collectors`.

    A registry per service instance (not prometheus-client's global one) lets tests run
    a gateway, a scheduler and agents in one process without their names clashing, and
    lets a test list exactly what a service exports.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    for collector in (*SHARED, *collectors):
        registry.register(collector)
    return registry


SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name `registry` can expose (`_total`, `_bucket`, … included), also
    for labelled metrics that have no series yet."""
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + s for s in SERIES_SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@dataclass
class Exporter:
    """A registry served over HTTP on its own port, in a daemon thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(registry: CollectorRegistry, host: str, port: int, service: str) -> Exporter:
    """Expose `registry` at `http://host:port/metrics`; raises OSError naming the setting
    when the port is taken, since an operator who asked for metrics wants to know."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            f"cannot serve {service} metrics on {host}:{port} ({exc.strerror or exc}); "
            f"choose another port or 0 to disable"
        ) from exc
    exporter = Exporter(server, thread)
    log.info("metrics.serving", url=f"http://{host}:{exporter.port}/metrics")
    return exporter
