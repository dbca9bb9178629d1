"""docker-compose.yml cannot run here (no Docker engine), so it is checked as data:
every build context, Dockerfile and command exists, and every variable it sets is one
the service really reads."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OURS = {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}
# Read straight from the environment by fleet_runtime.logs, not by a settings class.
PROCESS_WIDE = {"FLEET_LOG_FORMAT"}


def env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias or field.alias
        names.add((alias if isinstance(alias, str) else prefix + name).upper())
    return names


def settings_of(module: str) -> type[BaseSettings]:
    package = module.split(".")[0]
    mod = importlib.import_module(f"{package}.settings")
    found = [
        obj
        for obj in vars(mod).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseSettings)
        and obj is not BaseSettings
        and obj.__module__ == mod.__name__
    ]
    assert len(found) == 1, f"{package}.settings should hold one settings class: {found}"
    return found[0]


def command_module(svc: dict[str, Any]) -> str:
    command = svc["command"]
    assert command[:2] == ["python", "-m"], command
    return str(command[2])


def test_ours_are_the_three_services() -> None:
    assert set(OURS) == {"api", "scheduler", "device-agent"}
    assert {"postgres", "nats-1", "nats-2", "nats-3"} <= set(COMPOSE["services"])


@pytest.mark.parametrize("name", sorted(OURS))
def test_build_context_dockerfile_and_command_exist(name: str) -> None:
    svc = OURS[name]
    context = ROOT / svc["build"]["context"]
    dockerfile = context / svc["build"]["dockerfile"]
    assert context.is_dir()
    assert dockerfile.is_file()
    module = command_module(svc)
    assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
    assert importlib.util.find_spec(f"{module}.__main__") is not None
    assert f'"-m", "{module}"' in dockerfile.read_text()


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_variable_set_is_read_by_the_service(name: str) -> None:
    svc = OURS[name]
    read = env_names(settings_of(command_module(svc))) | PROCESS_WIDE
    unknown = sorted(set(svc["environment"]) - read)
    assert not unknown, f"{name} sets variables it never reads: {unknown}"


def test_agents_in_deployments_always_have_material_roots() -> None:
    assert OURS["device-agent"]["environment"]["FLEET_AGENT_MATERIAL_ROOTS"]
    env_example = (ROOT / "deploy" / "agent.env.example").read_text()
    assert "FLEET_AGENT_MATERIAL_ROOTS=/" in env_example


def test_nats_cluster_nodes_share_one_config() -> None:
    conf = (ROOT / "deploy" / "nats" / "cluster.conf").read_text()
    for node in ("nats-1", "nats-2", "nats-3"):
        assert f"nats-route://{node}:6222" in conf
        assert COMPOSE["services"][node]["command"][-1] == node


def test_agent_env_example_sets_only_what_the_agent_reads() -> None:
    lines = (ROOT / "deploy" / "agent.env.example").read_text().splitlines()
    names = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    read = env_names(settings_of("fleet_agent")) | PROCESS_WIDE
    assert names <= read, sorted(names - read)
