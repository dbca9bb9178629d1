"""Every metric the scheduler exports, and the one-line hooks the loops call.

Two kinds:
- counted as things happen, in this process: commands handled and their handling
  time, events appended, the relay's publishes, dispatch latency (ready -> started),
  and how long agents' reports waited in REPORTS before they were applied;
- read from the database when Prometheus scrapes (`StateCollector`): tasks per
  status (the `task_counts` counters kept in the log's transaction, never a count over the
  table; per script only from the agents' run counters), agents live / lost, devices
  known / online / busy per agent, relay lag and leadership, database reachability
  and the connection pool. These are the fleet's, not this process's: every scheduler
  replica reports the same values, so dashboards take `max` over replicas.

Labels stay bounded: script, state, command, code, event type, agent and host. Never
a task id or a serial.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet_runtime.metrics import Exporter, exported_names, serve, service_registry
from fleet_scheduler import migrate, partition_owners
from fleet_scheduler.context import Context
from fleet_scheduler.store import RecordedEvent

log = structlog.get_logger(__name__)


RELAY_LOCK = 0x5C4ED002
"""The relay's advisory lock key (`relay.RELAY_LOCK`), looked up in pg_locks."""

SCRAPE_TIMEOUT_SECONDS = 3.0
STATES = {0: "pending", 1: "running", 2: "completed", 3: "failed"}

COMMANDS = Counter(
    "fleet_commands_handled_total",
    "Commands applied (or answered from their recorded result), by type and result code.",
    ["command", "code"],
    registry=None,
)
COMMAND_SECONDS = Histogram(
    "fleet_command_handling_seconds",
    "From a fetched batch of commands reaching the scheduler to each command's answer.",
    ["command"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)
EVENTS = Counter(
    "fleet_events_appended_total",
    "Events appended to the log (committed), by event type.",
    ["type"],
    registry=None,
)
RELAY_PUBLISHED = Counter(
    "fleet_relay_published_events_total",
    "Events the relay published to EVENTS and JetStream acknowledged.",
    registry=None,
)
RELAY_PUBLISH_SECONDS = Histogram(
    "fleet_relay_publish_seconds",
    "Time to publish one batch of events to EVENTS, acks included.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=None,
)
WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

DISPATCH_LATENCY = Histogram(
    "fleet_dispatch_latency_seconds",
    "From a task being ready (due, and its phone free after its previous task) to the"
    " agent's start report being recorded.",
    buckets=WAIT_BUCKETS,
    registry=None,
)

REPORT_WAIT = Histogram(
    "fleet_report_wait_seconds",
    "From an agent's report message being stored in REPORTS to the scheduler having"
    " applied it (the transaction of its last report committed): how far the record is"
    " behind the phones. One observation per message, which holds one to a few hundred"
    " reports.",
    buckets=WAIT_BUCKETS,
    registry=None,
)
"""Dispatch latency ends at a start report's record, so a scheduler behind on REPORTS
shows there as slow dispatch; this says how much of it is that wait. The stored time is
the NATS server's clock, the end this process's: skew between the two shifts it."""

COUNTED: tuple[Collector, ...] = (COMMANDS, COMMAND_SECONDS, EVENTS, RELAY_PUBLISHED)
COUNTED += (RELAY_PUBLISH_SECONDS, DISPATCH_LATENCY, REPORT_WAIT)


@dataclass
class Switch:
    """Whether anything is measured: set once at start from the settings, so a scheduler
    with metrics off does none of the work (the bench compares the two)."""

    on: bool = True


SWITCH = Switch()


def now() -> float:
    return time.perf_counter()


# Hooks ------------------------------------------------------------------------------


def command_handled(command: str, code: int, started: float) -> None:
    if not SWITCH.on:
        return
    COMMANDS.labels(command, str(code)).inc()
    COMMAND_SECONDS.labels(command).observe(time.perf_counter() - started)


def relay_batch(count: int, seconds: float) -> None:
    """One relay batch stored in EVENTS (JetStream acked it): its events and its time.
    Called in the scheduler's process for a relay in its own process too."""
    if not SWITCH.on:
        return
    RELAY_PUBLISH_SECONDS.observe(seconds)
    RELAY_PUBLISHED.inc(count)


def dispatch_latency(ready_at: datetime, started_at: datetime) -> float:
    """Seconds from a task being ready (due, and its phone free after the previous task)
    to its start; the projections know both from the rows they load anyway."""
    return max(0.0, (started_at - ready_at).total_seconds())


def committed(appended: Sequence[RecordedEvent], latencies: Sequence[float]) -> None:
    """After a commit: what it appended is in the log for good."""
    if not SWITCH.on:
        return
    for kind, count in Tally(rec.type for rec in appended).items():
        EVENTS.labels(kind).inc(count)
    for seconds in latencies:
        DISPATCH_LATENCY.observe(seconds)


def reports_applied(msgs: Sequence[Msg]) -> None:
    """Messages of REPORTS whose every report has been applied and committed."""
    if not SWITCH.on:
        return
    now = datetime.now(UTC)
    for msg in msgs:
        REPORT_WAIT.observe(max(0.0, (now - msg.metadata.timestamp).total_seconds()))


# State read at scrape time ----------------------------------------------------------


@dataclass
class Snapshot:
    database_up: bool = False
    tasks: list[tuple[str, int]] = field(default_factory=list)
    tasks_by_script: list[tuple[str, str, int]] = field(default_factory=list)
    """(script, state, count)"""
    agents: list[tuple[str, str, bool]] = field(default_factory=list)
    """(agent, host, live)"""
    devices: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    """(agent, host, known, online, busy)"""
    relay_lag: int | None = None
    relay_leaders: int | None = None
    partitions: list[tuple[str, int]] = field(default_factory=list)
    """(holder, serial partitions leased); "" for the partitions nobody holds"""
    pool: tuple[int, int, int] = (0, 0, 0)
    """(busy, idle, max) connections"""


def leased_counts(held: dict[int, str], partitions: int) -> list[tuple[str, int]]:
    """(holder, serial partitions it leases) by holder, "" for those nobody holds."""
    counts = Tally(held.values())
    if partitions > len(held):
        counts[""] = partitions - len(held)
    return sorted(counts.items())


async def read_snapshot(ctx: Context) -> Snapshot:
    pool = ctx.pool
    snap = Snapshot()
    size, idle = pool.get_size(), pool.get_idle_size()
    snap.pool = (size - idle, idle, pool.get_max_size())
    lease = timedelta(seconds=ctx.settings.scheduler_agent_lease_seconds)
    conn: asyncpg.Connection
    async with pool.acquire(timeout=SCRAPE_TIMEOUT_SECONDS) as conn:
        rows = await conn.fetch(
            "SELECT status, sum(count)::bigint AS count FROM task_counts"
            " GROUP BY status ORDER BY status"
        )
        snap.tasks = [(STATES.get(r["status"], str(r["status"])), r["count"]) for r in rows]
        rows = await conn.fetch(
            "SELECT script_name, status, sum(count)::bigint AS count FROM task_counts"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
        snap.tasks_by_script = [
            (r["script_name"], STATES.get(r["status"], str(r["status"])), r["count"]) for r in rows
        ]
        rows = await conn.fetch(
            "SELECT agent_id, coalesce(host, '') AS host, NOT lost AND last_seen >= $1 AS live"
            " FROM agents",
            ctx.clock() - lease,
        )
        snap.agents = [(r["agent_id"], r["host"], r["live"]) for r in rows]
        rows = await conn.fetch(
            "SELECT coalesce(agent_id, '') AS agent, coalesce(max(host), '') AS host,"
            " count(*) AS known, count(*) FILTER (WHERE online) AS online,"
            " count(*) FILTER (WHERE busy) AS busy FROM devices GROUP BY agent_id"
        )
        snap.devices = [(r["agent"], r["host"], r["known"], r["online"], r["busy"]) for r in rows]
        snap.relay_lag = await conn.fetchval(
            "SELECT coalesce(sum(l.next_position - r.position), 0)::bigint"
            " FROM log_partitions l JOIN relay_partitions r ON r.partition = l.id"
        )
        snap.partitions = leased_counts(
            await partition_owners.holders(conn), await migrate.installed_partitions(conn)
        )
        # A single bigint key shows in pg_locks as classid (high half) / objid (low half).
        snap.relay_leaders = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1 AND objid = $2 AND objsubid = 1",
            RELAY_LOCK >> 32,
            RELAY_LOCK & 0xFFFFFFFF,
        )
    snap.database_up = True
    return snap


class StateCollector(Collector):
    """Reads the fleet's state from the database on each scrape.

    Prometheus scrapes from the exporter's thread; the read runs on the scheduler's
    event loop (the pool belongs to it), bounded by `SCRAPE_TIMEOUT_SECONDS`.
    """

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop

    def snapshot(self) -> Snapshot:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(read_snapshot(self.ctx), SCRAPE_TIMEOUT_SECONDS), self.loop
        )
        try:
            return future.result(SCRAPE_TIMEOUT_SECONDS + 1)
        except Exception as exc:
            future.cancel()
            log.warning("metrics.database_unavailable", error=str(exc) or repr(exc))
            size = self.ctx.pool.get_size()
            idle = self.ctx.pool.get_idle_size()
            return Snapshot(pool=(size - idle, idle, self.ctx.pool.get_max_size()))

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())

    def describe(self) -> Iterator[Metric]:
        yield from families(Snapshot())


def families(snap: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "fleet_database_up", "1 when the scheduler's last read of PostgreSQL succeeded."
    )
    up.add_metric([], 1.0 if snap.database_up else 0.0)
    yield up
    pool = GaugeMetricFamily(
        "fleet_db_pool_connections", "Connections in the asyncpg pool, by state.", labels=["state"]
    )
    pool.add_metric(["busy"], snap.pool[0])
    pool.add_metric(["idle"], snap.pool[1])
    yield pool
    pool_max = GaugeMetricFamily("fleet_db_pool_max_connections", "The pool's size limit.")
    pool_max.add_metric([], snap.pool[2])
    yield pool_max
    tasks = GaugeMetricFamily(
        "fleet_tasks",
        "Tasks not deleted, by status (the counters kept with the log).",
        labels=["state"],
    )
    for state, count in snap.tasks:
        tasks.add_metric([state], count)
    yield tasks
    # Script names come from the registered scripts (post and admin-registered custom
    # ones), so the label set stays as small as the script catalogue.
    by_script = GaugeMetricFamily(
        "fleet_tasks_by_script",
        "Tasks not deleted, by script and status (counters kept with the log).",
        labels=["script", "state"],
    )
    for script, state, count in snap.tasks_by_script:
        by_script.add_metric([script, state], count)
    yield by_script
    agents = GaugeMetricFamily("fleet_agents", "Agents known, live or lost.", labels=["state"])
    agents.add_metric(["live"], sum(1 for a in snap.agents if a[2]))
    agents.add_metric(["lost"], sum(1 for a in snap.agents if not a[2]))
    yield agents
    agent_up = GaugeMetricFamily(
        "fleet_agent_up",
        "1 while the agent heartbeats within its lease, 0 once it is silent or lost.",
        labels=["agent", "host"],
    )
    for agent, host, live in snap.agents:
        agent_up.add_metric([agent, host], 1.0 if live else 0.0)
    yield agent_up
    names = ("fleet_devices", "fleet_devices_online", "fleet_devices_busy")
    helps = (
        "Phones known on each agent.",
        "Phones attached and online on each agent.",
        "Phones running (or held for) a task on each agent.",
    )
    for i, (name, text) in enumerate(zip(names, helps, strict=True)):
        gauge = GaugeMetricFamily(name, text, labels=["agent", "host"])
        for agent, host, *counts in snap.devices:
            gauge.add_metric([agent, host], counts[i])
        yield gauge
    lag = GaugeMetricFamily(
        "fleet_relay_lag_events", "Events in the log not yet published to EVENTS by the relay."
    )
    if snap.relay_lag is not None:
        lag.add_metric([], snap.relay_lag)
    yield lag
    leaders = GaugeMetricFamily(
        "fleet_relay_leaders", "Database sessions holding the relay's lock (1 when healthy)."
    )
    if snap.relay_leaders is not None:
        leaders.add_metric([], snap.relay_leaders)
    yield leaders
    held = GaugeMetricFamily(
        "fleet_partitions_leased",
        'Serial log partitions each scheduler leases (scheduler "": held by none).',
        labels=["scheduler"],
    )
    for holder, count in snap.partitions:
        held.add_metric([holder], count)
    yield held


def registry_for(state: Collector | None = None) -> CollectorRegistry:
    """The scheduler's registry: process, NATS, counted and (when given) state metrics."""
    return service_registry([*COUNTED, *([state] if state is not None else [])])


class Shapes(Collector):
    """The state metrics with no values: what `exported` lists without a database."""

    def collect(self) -> Iterator[Metric]:
        yield from families(Snapshot())


def exported() -> set[str]:
    """Every series name the scheduler exports."""
    return exported_names(registry_for(Shapes()))


def start(ctx: Context) -> Exporter | None:
    """Serve the scheduler's metrics, unless the settings turn them off."""
    settings = ctx.settings
    SWITCH.on = settings.metrics_enabled and bool(settings.scheduler_metrics_port)
    if not SWITCH.on or settings.scheduler_metrics_port is None:
        return None
    collector = StateCollector(ctx, asyncio.get_running_loop())
    return serve(
        registry_for(collector), settings.metrics_host, settings.scheduler_metrics_port, "scheduler"
    )
