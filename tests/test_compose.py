"""docker-compose.yml cannot run here (no Docker engine), so it is checked as data:
every build context, Dockerfile and command exists, and every variable it sets is one
the service really reads."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path, PurePosixPath
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


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {name: value for name, value in pairs}


AGENT_ENV = env_file(ROOT / "deploy" / "agent.env.example")
# Folders that hold far more than media: a root there exposes the host's own files.
TOO_BROAD = {
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
}


def too_broad(root: str) -> str | None:
    """Why `root` must not be a material root, or None when it is narrow enough."""
    path = PurePosixPath(root)
    if not path.is_absolute():
        return "it is not an absolute path"
    if ".." in path.parts:
        return "it climbs with '..'"
    if str(path) in TOO_BROAD or len(path.parts) < 3:
        return "it exposes far more than media (use a folder such as /srv/fleet/media)"
    if path.parts[1] in {"etc", "proc", "sys", "dev", "boot", "root", "run"}:
        return f"it lies under /{path.parts[1]}, which holds the host's own files"
    return None


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("docker-compose.yml", OURS["device-agent"]["environment"]["FLEET_AGENT_MATERIAL_ROOTS"]),
        ("deploy/agent.env.example", AGENT_ENV.get("FLEET_AGENT_MATERIAL_ROOTS", "")),
    ],
)
def test_agents_in_deployments_have_narrow_material_roots(where: str, value: str) -> None:
    roots = [part.strip() for part in value.split(",") if part.strip()]
    assert roots, f"{where}: FLEET_AGENT_MATERIAL_ROOTS must be set"
    problems = {root: too_broad(root) for root in roots}
    assert not any(problems.values()), f"{where}: {problems}"


@pytest.mark.parametrize("root", ["/", "/home", "/srv", "/var/", "/etc/fleet", "media", "/a/../"])
def test_over_broad_roots_are_refused(root: str) -> None:
    assert too_broad(root) is not None


def test_the_agents_media_volume_is_its_root_read_only() -> None:
    roots = OURS["device-agent"]["environment"]["FLEET_AGENT_MATERIAL_ROOTS"].split(",")
    mounts = OURS["device-agent"].get("volumes", [])
    for root in roots:
        assert any(m.split(":")[1] == root and m.endswith(":ro") for m in mounts), mounts


def test_nats_cluster_nodes_share_one_config() -> None:
    conf = CLUSTER_CONF
    assert "server_name: $FLEET_NATS_NODE" in conf
    for node in ("nats-1", "nats-2", "nats-3"):
        assert f"nats-route://{node}:6222" in conf
        svc = COMPOSE["services"][node]
        assert svc["environment"]["FLEET_NATS_NODE"] == node
        # A name given as a flag is lost when the config is reloaded after a revocation.
        assert "--name" not in svc["command"]


# NATS: identities and TLS -------------------------------------------------------------
CLUSTER_CONF = (ROOT / "deploy" / "nats" / "cluster.conf").read_text()
LEAF_CONF = (ROOT / "deploy" / "nats" / "leaf-agent-host.conf").read_text()
SECRETS = COMPOSE.get("secrets", {})


def block(conf: str, name: str) -> str:
    """The text of the top-level `name { ... }` block (braces balanced)."""
    start = re.search(rf"^{name}\s*\{{", conf, re.MULTILINE)
    assert start, f"no {name} block"
    depth, i = 0, start.end() - 1
    for i in range(start.end() - 1, len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[i], 0)
        if depth == 0:
            break
    return conf[start.end() : i]


def test_every_nats_link_of_the_cluster_is_tls() -> None:
    for section in ("tls", "cluster", "leafnodes"):
        text = CLUSTER_CONF if section == "tls" else block(CLUSTER_CONF, section)
        tls = block(text, "tls") if section == "tls" else text[text.index("tls") :]
        for key in ("cert_file", "key_file", "ca_file"):
            assert re.search(rf"{key}:\s*/etc/nats/tls/", tls), (section, key)
    # Routes prove themselves both ways; leaf links authenticate with an nkey instead.
    assert re.search(r"verify:\s*true", block(CLUSTER_CONF, "cluster"))
    assert "authorization" not in block(CLUSTER_CONF, "leafnodes")
    assert re.search(r"^include \./auth\.conf", CLUSTER_CONF, re.MULTILINE)


@pytest.mark.parametrize("node", ["nats-1", "nats-2", "nats-3"])
def test_every_node_mounts_the_identities_and_its_certificates(node: str) -> None:
    mounts = {
        m.split(":")[1]: m.split(":")[0] for m in COMPOSE["services"][node]["volumes"] if ":" in m
    }
    needed = set(re.findall(r"/etc/nats/tls/[\w.-]+", CLUSTER_CONF)) | {"/etc/nats/auth.conf"}
    assert needed <= set(mounts), sorted(needed - set(mounts))
    # The CA's private key never sits on a server.
    assert not any("ca-key" in source for source in mounts.values())


def test_leaf_node_dials_out_over_tls_with_an_identity_from_the_environment() -> None:
    assert re.search(r'urls:\s*\["tls://', LEAF_CONF)
    assert "nkey: $FLEET_LEAF_NKEY_SEED" in LEAF_CONF
    assert "ca_file:" in block(LEAF_CONF, "leafnodes")
    assert "listen: 127.0.0.1:4222" in LEAF_CONF


def _secret_target(svc: dict[str, Any], path: str) -> str:
    """The compose secret mounted at `path` in this service (/run/secrets/<name>)."""
    assert path.startswith("/run/secrets/"), path
    name = path.removeprefix("/run/secrets/")
    assert name in svc.get("secrets", []), f"{name} is not mounted"
    assert name in SECRETS, f"secret {name} is not defined"
    return str(SECRETS[name]["file"])


EXPECTED_SEED = {
    "api": "seeds/gateway.nk",
    "scheduler": "seeds/scheduler.nk",
    "device-agent": "seeds/agent-host-1.nk",
}


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_service_has_its_own_identity_over_tls(name: str) -> None:
    env = OURS[name]["environment"]
    urls = env["FLEET_NATS_URL"].split(",")
    assert all(u.startswith("tls://") for u in urls), urls
    assert _secret_target(OURS[name], env["FLEET_NATS_TLS_CA_FILE"]).endswith("tls/ca.pem")
    seed = _secret_target(OURS[name], env["FLEET_NATS_NKEY_SEED_FILE"])
    assert seed.endswith(EXPECTED_SEED[name]), seed
    if name == "device-agent":
        assert seed.endswith(f"agent-{env['FLEET_AGENT_ID']}.nk")


def test_the_agent_host_example_has_its_identity_over_tls() -> None:
    assert AGENT_ENV["FLEET_NATS_URL"].startswith("tls://")
    assert AGENT_ENV["FLEET_NATS_NKEY_SEED_FILE"].endswith(
        f"agent-{AGENT_ENV['FLEET_AGENT_ID']}.nk"
    )
    assert AGENT_ENV["FLEET_NATS_TLS_CA_FILE"]


def test_streams_are_replicated_on_the_three_node_cluster() -> None:
    for name in ("api", "scheduler"):  # the processes that create and update streams
        assert OURS[name]["environment"]["FLEET_NATS_STREAM_REPLICAS"] == "3"


# Secrets -----------------------------------------------------------------------------
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name, svc in COMPOSE["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                assert str(value).startswith("${"), f"{name}.{var} is hard-coded"
    pg = COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert pg.startswith("${FLEET_POSTGRES_PASSWORD:?")
    url = OURS["scheduler"]["environment"]["FLEET_DATABASE_URL"]
    assert re.fullmatch(
        r"postgresql://fleet:\$\{FLEET_POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/fleet", url
    )
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text()


def test_agent_env_example_sets_only_what_the_agent_reads() -> None:
    lines = (ROOT / "deploy" / "agent.env.example").read_text().splitlines()
    names = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    read = env_names(settings_of("fleet_agent")) | PROCESS_WIDE
    assert names <= read, sorted(names - read)
