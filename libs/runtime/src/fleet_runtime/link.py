"""How a process reaches NATS beyond the URL: its identity, TLS, and the streams' limits.

Every service's settings class inherits `NatsLinkSettings`, so the gateway, the
scheduler and the agent read the same variables:

- `FLEET_NATS_NKEY_SEED_FILE`: this process's NATS identity (an nkey seed file issued
  with `python -m fleet_devstack creds issue-…`). Unset: no credentials, as `make run`.
- `FLEET_NATS_TLS_CA_FILE`: the CA that signed the servers' certificates; set, the link
  is TLS and the server's certificate is verified. `FLEET_NATS_TLS_CERT_FILE` /
  `FLEET_NATS_TLS_KEY_FILE` add a client certificate where the servers ask for one.
- `FLEET_NATS_STREAM_REPLICAS` and the per-stream limits: what `ensure_streams` asks
  for. Every process that manages streams must be given the same values.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from pathlib import Path

from nats.js.api import KeyValueConfig
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from fleet_contracts.subjects import ALL_STREAMS, COMMANDS, EVENTS, REPORTS, StreamSpec

GIB = 1024**3


@dataclass(frozen=True)
class NatsLink:
    """What `bus.connect` needs besides the URL; the empty link is plain, anonymous NATS."""

    nkey_seed_file: Path | None = None
    tls: ssl.SSLContext | None = None
    inbox_prefix: str | None = None


class NatsLinkSettings(BaseSettings):
    # Identity and TLS (all unset: loopback development, no credentials, no TLS).
    nats_nkey_seed_file: Path | None = None
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    # Streams: replicas (3 on a three-node cluster) and retention limits.
    nats_stream_replicas: int = Field(1, ge=1, le=5)
    nats_commands_max_age_seconds: float = Field(COMMANDS.max_age_seconds, gt=0)
    nats_commands_max_bytes: int = Field(COMMANDS.max_bytes, gt=0)
    nats_events_max_age_seconds: float = Field(EVENTS.max_age_seconds, gt=0)
    nats_events_max_bytes: int = Field(EVENTS.max_bytes, gt=0)
    nats_reports_max_age_seconds: float = Field(REPORTS.max_age_seconds, gt=0)
    nats_reports_max_bytes: int = Field(REPORTS.max_bytes, gt=0)
    nats_kv_max_bytes: int = Field(64 * 1024**2, gt=0)

    @field_validator(
        "nats_nkey_seed_file",
        "nats_tls_ca_file",
        "nats_tls_cert_file",
        "nats_tls_key_file",
        mode="before",
    )
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _cert_needs_key(self) -> NatsLinkSettings:
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError(
                "FLEET_NATS_TLS_CERT_FILE and FLEET_NATS_TLS_KEY_FILE go together: set both"
            )
        if self.nats_tls_cert_file is not None and self.nats_tls_ca_file is None:
            raise ValueError("FLEET_NATS_TLS_CERT_FILE needs FLEET_NATS_TLS_CA_FILE")
        return self

    def nats_link(self, inbox_prefix: str | None = None) -> NatsLink:
        """The link for `bus.connect`; `inbox_prefix` is the role's (see permissions)."""
        return NatsLink(
            nkey_seed_file=self.nats_nkey_seed_file,
            tls=self.nats_tls_context(),
            inbox_prefix=inbox_prefix,
        )

    def nats_tls_context(self) -> ssl.SSLContext | None:
        if self.nats_tls_ca_file is None:
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.nats_tls_ca_file)
        )
        if self.nats_tls_cert_file is not None and self.nats_tls_key_file is not None:
            context.load_cert_chain(str(self.nats_tls_cert_file), str(self.nats_tls_key_file))
        return context

    def kv_config(self, bucket: str) -> KeyValueConfig:
        """A KV bucket as this deployment creates it: latest value only, bounded, replicated."""
        return KeyValueConfig(
            bucket=bucket,
            history=1,
            max_bytes=self.nats_kv_max_bytes,
            replicas=self.nats_stream_replicas,
        )

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        """COMMANDS, EVENTS and REPORTS with the configured retention limits."""
        limits = {
            COMMANDS.name: (self.nats_commands_max_age_seconds, self.nats_commands_max_bytes),
            EVENTS.name: (self.nats_events_max_age_seconds, self.nats_events_max_bytes),
            REPORTS.name: (self.nats_reports_max_age_seconds, self.nats_reports_max_bytes),
        }
        return tuple(
            dataclasses.replace(
                spec, max_age_seconds=limits[spec.name][0], max_bytes=limits[spec.name][1]
            )
            for spec in ALL_STREAMS
        )
