"""Every metric the device agent exports, and the meter each run carries.

A run's meter times each step the script reports (`progress(step, …)`: a step lasts
until the next one begins or the script ends), the whole run, and on failure counts
the step it failed in with a bounded reason class (`reason_class`), never the raw
message. Labels: script, step, outcome, reason. Never a task id or a serial: the
agent's own id and host come from Prometheus's target labels and `fleet_agent_info`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet_contracts.agent import Report, TaskFailedReport
from fleet_runtime.metrics import Exporter, exported_names, serve, service_registry

RUNS = Counter(
    "fleet_agent_runs_total",
    "Script runs ended on this host, by script and outcome (completed, failed, stopped).",
    ["script", "outcome"],
    registry=None,
)
RUN_SECONDS = Histogram(
    "fleet_agent_run_seconds",
    "From the run request accepted to the script's end, by script and outcome.",
    ["script", "outcome"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
    registry=None,
)
STEP_SECONDS = Histogram(
    "fleet_agent_step_seconds",
    "Time spent in each step a script reports, by script and step.",
    ["script", "step"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    registry=None,
)
STEP_FAILURES = Counter(
    "fleet_agent_step_failures_total",
    "Runs that failed, by script, the step they were in, and a reason class.",
    ["script", "step", "reason"],
    registry=None,
)
RUNS_ACTIVE = Gauge("fleet_agent_runs_active", "Scripts running on this host now.", registry=None)
REPORTS_LOST = Counter(
    "fleet_agent_reports_lost_total",
    "Reports given up on after every retry (the scheduler then learns by lease or restart).",
    registry=None,
)

COUNTED: tuple[Collector, ...] = (RUNS, RUN_SECONDS, STEP_SECONDS, STEP_FAILURES, RUNS_ACTIVE)
COUNTED += (REPORTS_LOST,)

BEFORE_FIRST_STEP = "none"
OTHER_STEP = "other"
MAX_STEPS_PER_SCRIPT = 64
"""A plugin could name steps with changing text; past this many names per script, new
ones are counted as `other` so the label set stays bounded."""

_steps_seen: dict[str, set[str]] = {}


@dataclass
class Switch:
    """Whether runs are measured: set once at start from the settings, so an agent with
    metrics off does none of the work (the bench compares the two)."""

    on: bool = True


SWITCH = Switch()


def step_label(script: str, step: str) -> str:
    seen = _steps_seen.setdefault(script, set())
    if step in seen or len(seen) < MAX_STEPS_PER_SCRIPT:
        seen.add(step)
        return step
    return OTHER_STEP


_step_timers: dict[tuple[str, str], Any] = {}
"""The histogram child per (script, step label): a run reports a dozen steps, and
`labels()` is the costly part of an observation."""


def step_timer(script: str, label: str) -> Any:
    timer = _step_timers.get((script, label))
    if timer is None:
        timer = _step_timers[(script, label)] = STEP_SECONDS.labels(script, label)
    return timer


# The runner's fixed reasons (runs.py), compared as text to keep this module free of it.
_EXACT = {
    "device disconnected": "device_disconnected",
    "agent stopping": "agent_stopping",
    "stopped": "stopped",
}


def reason_class(script: str, reason: str) -> str:
    """A failure's reason as one of a few classes, for a label."""
    if reason in _EXACT:
        return _EXACT[reason]
    if reason.startswith("phone error:"):
        return "phone_error"
    if reason.startswith(f"script {script!r} crashed"):
        return "crashed"
    if reason.startswith("script_config"):
        return "bad_config"
    return "script_failure"


@dataclass
class RunMeter:
    """Times one run; created when the run is accepted."""

    started: float = field(default_factory=time.perf_counter)
    step: str = BEFORE_FIRST_STEP
    step_started: float | None = None
    on: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.on = SWITCH.on
        if self.on:
            RUNS_ACTIVE.inc()

    def begin(self, script: str, step: str) -> None:
        """The script reported `step`: the previous step (if any) ends now."""
        if not self.on:
            return
        now = time.perf_counter()
        self._close_step(script, now)
        self.step = step_label(script, step)
        self.step_started = now

    def _close_step(self, script: str, now: float) -> None:
        if self.step_started is not None:
            step_timer(script, self.step).observe(now - self.step_started)

    def ended(self, script: str, outcome: Report) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        self._close_step(script, now)
        self.step_started = None
        RUNS_ACTIVE.dec()
        if isinstance(outcome, TaskFailedReport):
            kind = "stopped" if outcome.stopped else "failed"
            if not outcome.stopped:
                STEP_FAILURES.labels(script, self.step, reason_class(script, outcome.reason)).inc()
        else:
            kind = "completed"
        RUNS.labels(script, kind).inc()
        RUN_SECONDS.labels(script, kind).observe(now - self.started)


class HostCollector(Collector):
    """What this agent holds now: phones attached and busy, and who it is."""

    def __init__(
        self, agent_id: str, host: str, attached: Callable[[], int], busy: Callable[[], int]
    ) -> None:
        self.agent_id = agent_id
        self.host = host
        self.attached = attached
        self.busy = busy

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "fleet_agent_info", "Always 1; names this agent and host.", labels=["agent", "host"]
        )
        info.add_metric([self.agent_id, self.host], 1.0)
        yield info
        attached = GaugeMetricFamily("fleet_agent_devices", "Phones attached to this agent now.")
        attached.add_metric([], self.attached())
        yield attached
        busy = GaugeMetricFamily(
            "fleet_agent_devices_busy", "Phones running a script on this agent now."
        )
        busy.add_metric([], self.busy())
        yield busy


def registry_for(host: Collector | None = None) -> CollectorRegistry:
    return service_registry([*COUNTED, *([host] if host is not None else [])])


def exported() -> set[str]:
    """Every series name the agent exports."""
    return exported_names(registry_for(HostCollector("", "", lambda: 0, lambda: 0)))


def start(enabled: bool, host: str, port: int | None, collector: HostCollector) -> Exporter | None:
    SWITCH.on = enabled and bool(port)
    if not SWITCH.on or port is None:
        return None
    return serve(registry_for(collector), host, port, "agent")
