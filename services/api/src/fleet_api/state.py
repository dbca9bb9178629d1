"""What the running gateway holds: its settings, its one NATS connection, the two KV
mirrors and the schedulers it has heard from. Built by the app's lifespan, read by the
routes through `gateway()`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from nats.aio.client import Client
from nats.js import JetStreamContext

from fleet_api.keys import KeyRecord
from fleet_api.kv import Mirror
from fleet_api.presence import Presence
from fleet_api.settings import ApiSettings
from fleet_contracts.scripts import ScriptSpec


@dataclass
class Gateway:
    settings: ApiSettings
    nc: Client
    js: JetStreamContext
    keys: Mirror[KeyRecord]
    scripts: Mirror[ScriptSpec]
    # Live SSE streams per caller (API key name, or "local"), for the per-caller cap.
    streams: dict[str, int] = field(default_factory=dict)
    presence: Presence = field(default_factory=Presence)


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw
