"""The Prometheus configuration, alert rules and Grafana dashboard in deploy/ are checked
as data (no Prometheus or Grafana runs here): they parse, the compose file mounts them
where they are read, and every metric a rule or a panel uses is one a service exports,
with labels that metric has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_agent import metrics as agent_metrics
from fleet_agent.settings import AgentSettings
from fleet_api import metrics as api_metrics
from fleet_scheduler import metrics as scheduler_metrics
from fleet_scheduler.settings import SchedulerSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
ALERTS = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "fleet.json").read_text())

EXPORTED = api_metrics.exported() | scheduler_metrics.exported() | agent_metrics.exported()
BUILTIN = {"up"}  # Prometheus's own per-target series
# Labels Prometheus adds to every scraped series, beside each metric's own.
TARGET_LABELS = {"job", "instance", "le"}

NAME = re.compile(r"\b(fleet_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
SELECTOR_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def rules() -> list[dict[str, Any]]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


def panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    exprs = [str(rule["expr"]) for rule in rules()]
    exprs += [t["expr"] for p in panels() for t in p["targets"]]
    exprs += [v["query"]["query"] for v in DASHBOARD["templating"]["list"]]
    return exprs


def labels_of() -> dict[str, set[str]]:
    """Each exported series name with the label names it can carry."""
    from prometheus_client import CollectorRegistry

    found: dict[str, set[str]] = {}
    registries: list[CollectorRegistry] = [
        api_metrics.install(__import__("fastapi").FastAPI()),
        scheduler_metrics.registry_for(scheduler_metrics.Shapes()),
        agent_metrics.registry_for(agent_metrics.HostCollector("", "", lambda: 0, lambda: 0)),
    ]
    for registry in registries:
        for collector in list(registry._collector_to_names):  # no public way to list them
            # A metric object knows its label names; a hand-built family too.
            names = set(getattr(collector, "_labelnames", ()))
            for family in collector.collect():
                own = names | set(getattr(family, "_labelnames", ()))
                for sample in family.samples:
                    own |= set(sample.labels)
                for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
                    found.setdefault(family.name + suffix, set()).update(own)
    return found


def test_every_metric_used_is_exported() -> None:
    used = {m.group(1) for expr in expressions() for m in NAME.finditer(expr)}
    assert used, "no metric found in the rules and panels"
    unknown = sorted(used - EXPORTED)
    assert not unknown, f"rules or panels use metrics no service exports: {unknown}"


def test_every_label_selected_exists_on_its_metric() -> None:
    known = labels_of()
    problems = []
    for expr in expressions():
        for match in NAME.finditer(expr):
            name, selector = match.group(1), match.group(2) or ""
            for label in SELECTOR_LABEL.findall(selector):
                if label not in known.get(name, set()) | TARGET_LABELS:
                    problems.append(f"{name}{{{label}}} in {expr!r}")
    assert not problems, problems


def test_the_names_test_can_fail() -> None:
    assert "fleet_no_such_metric_total" not in EXPORTED
    assert {"fleet_tasks", "fleet_agent_runs_total", "fleet_api_http_requests_total"} <= EXPORTED


def test_alert_rules_cover_what_operators_need() -> None:
    names = {rule["alert"] for rule in rules()}
    assert names >= {
        "FleetRelayLagGrowing",
        "FleetAgentLost",
        "FleetTaskFailureRateHigh",
        "FleetDispatchLatencyHigh",
        "FleetRelayLeaderMissing",
        "FleetDatabaseUnavailable",
    }
    for rule in rules():
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
        assert str(rule["expr"]).count("(") == str(rule["expr"]).count(")"), rule["alert"]
    used = {m for expr in expressions() for m in re.findall(r"\b(up)\{", expr)}
    assert used <= BUILTIN


def test_dashboard_has_the_three_views_and_valid_panels() -> None:
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Per host", "Per script"]
    assert {v["name"] for v in DASHBOARD["templating"]["list"]} == {"host", "script"}
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "prometheus"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("{") == expr.count("}"), expr
    # The per-host and per-script views filter by their variable.
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    assert "$host" in exprs["Phones online"]
    assert "$script" in exprs["Failures by step and reason (1 h)"]


def test_prometheus_scrapes_each_service_on_its_port() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    assert {"fleet-api", "fleet-scheduler", "fleet-agent"} <= set(jobs)
    assert jobs["fleet-api"]["dns_sd_configs"][0]["port"] == 50809
    scheduler_port = SchedulerSettings.model_fields["scheduler_metrics_port"].default
    agent_port = AgentSettings.model_fields["agent_metrics_port"].default
    assert jobs["fleet-scheduler"]["dns_sd_configs"][0]["port"] == scheduler_port
    assert jobs["fleet-agent"]["static_configs"][0]["targets"] == [f"device-agent:{agent_port}"]
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert isinstance(yaml.safe_load((DEPLOY / "prometheus" / "agents.yml").read_text()), list)


def test_dns_names_are_compose_services() -> None:
    for job in PROMETHEUS["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= set(COMPOSE["services"]), job["job_name"]


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_compose_mounts_files_that_exist(name: str) -> None:
    svc = COMPOSE["services"][name]
    for volume in svc["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (ROOT / source).exists(), volume
            assert target.startswith("/etc/"), volume


def test_compose_wires_config_and_dashboard_where_they_are_read() -> None:
    prom = COMPOSE["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    for path in ["/etc/prometheus/alerts.yml", *PROMETHEUS["rule_files"]]:
        assert path in mounts.values()
    agents_file = PROMETHEUS["scrape_configs"][2]["file_sd_configs"][0]["files"][0]
    assert agents_file in mounts.values()
    grafana = COMPOSE["services"]["grafana"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "fleet.yml").read_text()
    )
    dash_dir = provider["providers"][0]["options"]["path"]
    grafana_mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert grafana_mounts["./deploy/grafana/dashboards"] == dash_dir
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert source["datasources"][0]["uid"] == "prometheus"
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", ["scheduler", "device-agent"])
def test_scrapable_services_listen_beyond_loopback(name: str) -> None:
    assert COMPOSE["services"][name]["environment"]["FLEET_METRICS_HOST"] == "0.0.0.0"
