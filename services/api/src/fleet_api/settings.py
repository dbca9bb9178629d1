"""The gateway's settings, read once at start from `FLEET_*` environment variables."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fleet_contracts.materials import DEFAULT_ARTIFACT_RETENTION_HOURS
from fleet_runtime.link import NatsLinkSettings


class ApiSettings(NatsLinkSettings):  # + NATS identity, TLS, stream limits
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    api_host: str = "127.0.0.1"
    api_port: int = Field(50809, ge=1, le=65535)
    api_command_timeout_seconds: float = Field(10.0, gt=0)
    api_query_timeout_seconds: float = Field(5.0, gt=0)
    # A query unanswered this long is sent again (any scheduler may take it), up to three
    # sends: a scheduler that died holding it costs this, not the whole timeout. 0: never.
    api_query_hedge_seconds: float = Field(1.0, ge=0)
    api_require_keys: Literal["auto", "true", "false"] = "auto"
    # Request bodies above this are refused with 413 before a byte of them is parsed.
    api_max_body_bytes: int = Field(1_048_576, ge=1024)
    # Host names (comma-separated) a keyless gateway answers to besides loopback ones.
    api_allowed_hosts: str = ""
    # An SSE client that takes longer than this to accept one event is cut off.
    api_sse_send_timeout_seconds: float = Field(10.0, gt=0)
    api_sse_max_streams_per_caller: int = Field(20, ge=1)
    # A library upload streams to the object store; this bounds one file, not memory.
    api_material_max_bytes: int = Field(2 * 1024**3, ge=1)
    artifact_retention_hours: float = Field(DEFAULT_ARTIFACT_RETENTION_HOURS, gt=0)
    log_level: str = "INFO"
    metrics_enabled: bool = True

    @property
    def loopback(self) -> bool:
        """True when the gateway listens on loopback only, so no other host can call it."""
        if self.api_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            return False

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Host names configured in `FLEET_API_ALLOWED_HOSTS`, lower-cased."""
        return frozenset(h.strip().lower() for h in self.api_allowed_hosts.split(",") if h.strip())

    @property
    def keys_required(self) -> bool:
        """Whether a caller must present a key once keys exist (see `keys.Access`)."""
        if self.api_require_keys == "auto":
            return not self.loopback
        return self.api_require_keys == "true"
