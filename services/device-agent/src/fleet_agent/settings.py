"""The agent's settings, read once at start from `FLEET_*` environment variables."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from fleet_contracts.materials import DEFAULT_ARTIFACT_RETENTION_HOURS
from fleet_runtime.link import NatsLinkSettings


class AgentSettings(NatsLinkSettings):  # + NATS identity, TLS, stream limits
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    agent_id: str = Field(default_factory=socket.gethostname, min_length=1)
    agent_host: str = Field(default_factory=socket.gethostname)
    agent_driver: Literal["auto", "adb", "sim"] = "auto"
    agent_adb_address: str = "127.0.0.1:5037"
    agent_sim_devices: int = Field(8, ge=0, le=100_000)
    agent_sim_serial_prefix: str = "device_serial_"
    agent_sim_speed: float = Field(1.0, ge=0)
    # Comma-separated; empty means any readable file on this host may be posted.
    agent_material_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # One sub-folder per tag: <library>/<tag>/<media files> (material_source materialLibrary).
    agent_material_library: Path | None = None
    agent_heartbeat_seconds: float = Field(5.0, gt=0)
    # Reports made within this many seconds of each other go as one REPORTS message.
    agent_report_window_seconds: float = Field(0.01, ge=0, le=1)
    agent_screenshot_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "fleet-agent-screenshots"
    )
    agent_max_parallel: int | None = Field(None, ge=1)
    # Library items fetched from the central library, shared by every phone on the host.
    agent_material_cache_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "fleet-agent-materials"
    )
    agent_material_cache_max_bytes: int = Field(10 * 1024**3, ge=0)
    # Used only if this agent is the first to create the artifacts bucket.
    artifact_retention_hours: float = Field(DEFAULT_ARTIFACT_RETENTION_HOURS, gt=0)
    agent_ui_timeout_seconds: float = Field(15.0, gt=0)
    # A JSON-lines file this agent appends each run it begins and ends to (tests judge
    # the scheduler's record against it); unset: none kept.
    agent_run_log: Path | None = None
    # Where custom scripts reach the gateway (their TIKMATRIX_API_BASE).
    agent_api_base: str = "http://127.0.0.1:50809"
    log_level: str = "INFO"
    # Metrics: /metrics on a port of its own; 0 or empty serves none (see metrics.py).
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    agent_metrics_port: int | None = Field(9466, ge=0, le=65535)

    @field_validator("agent_material_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "agent_material_library",
        "agent_max_parallel",
        "agent_run_log",
        "agent_metrics_port",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def adb_host_port(self) -> tuple[str, int]:
        host, _, port = self.agent_adb_address.rpartition(":")
        return (host or "127.0.0.1", int(port or 5037))
