"""Device sessions and custom scripts: TikMatrix's custom-script API, as wire shapes.

A lease (`session`) lends one phone to a program: while it lives the phone is busy,
the scheduler dispatches nothing to it, and calls on the phone (UIAutomator2 JSON-RPC,
UI tree, screenshot, adb) are accepted only with its session id and only for its
serial. The session id is a secret the gateway makes and returns once; everything else
(events, lists, the scheduler's tables) knows a lease by its `lease_id`, a digest of
the secret, so nothing the log or a viewer shows can be used to drive a phone.

A custom script is a program registered by an admin (an argv list, run without a
shell on the phone's host), which a task then runs with a lease made for it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from fleet_contracts.messages import Message

DEFAULT_TTL_SECS = 120
MAX_TTL_SECS = 600
"""TikMatrix clamps a lease to 600 s; so do we (a longer ask is cut, not refused)."""
MAX_PARAMS_BYTES = 64 * 1024
MAX_SCRIPT_CONFIG_BYTES = 64 * 1024
MAX_LABEL = 200
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PLATFORM_PACKAGES = {
    "generic": "",
    "tiktok": "com.zhiliaoapp.musically",
    "instagram": "com.instagram.android",
}


def new_session_id() -> str:
    return secrets.token_hex(16)


def lease_id_of(session_id: str) -> str:
    """The public handle of a lease: safe to log, list and put in events."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


_SESSION_IN_PATH = re.compile(r"(/rpc/session/)([^/]+)")


def loggable_path(path: str) -> str:
    """A request path fit for the log: a session id in it becomes its lease id."""
    return _SESSION_IN_PATH.sub(lambda m: m.group(1) + "lease:" + lease_id_of(m.group(2)), path)


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


class Platform(StrEnum):
    GENERIC = "generic"
    TIKTOK = "tiktok"
    INSTAGRAM = "instagram"

    @property
    def package(self) -> str:
        return PLATFORM_PACKAGES[self.value]


# REST bodies -------------------------------------------------------------------------
class LeaseRequest(BaseModel):
    """POST /api/v1/rpc/session."""

    model_config = ConfigDict(extra="ignore")

    serial: str = Field(..., min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    label: str = Field("", max_length=MAX_LABEL, pattern=r"^[^\x00]*$")
    ttl_secs: int = Field(
        DEFAULT_TTL_SECS, ge=1, description=f"seconds; longer asks are cut to {MAX_TTL_SECS}"
    )


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ttl_secs: int | None = Field(None, ge=1, description="a new lease length, else the last")


class JsonRpcRequest(BaseModel):
    """POST /api/v1/rpc/jsonrpc: one UIAutomator2 JSON-RPC call."""

    model_config = ConfigDict(extra="ignore")

    serial: str = Field(..., min_length=1, max_length=200)
    method: StrictStr = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.]+$")
    params: list[Any] | dict[str, Any] = Field(default_factory=list)
    timeout: float = Field(10.0, gt=0, le=120, description="seconds the phone may take")

    @field_validator("params")
    @classmethod
    def _bounded(cls, value: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
        size = json_size(value)
        if size > MAX_PARAMS_BYTES:
            raise ValueError(f"is {size} bytes as JSON; at most {MAX_PARAMS_BYTES} are accepted")
        return value


class AdbRequest(BaseModel):
    """POST /api/v1/rpc/adb: `args` as adb's command line takes them (`shell ...`)."""

    model_config = ConfigDict(extra="ignore")

    serial: str = Field(..., min_length=1, max_length=200)
    args: list[StrictStr] = Field(..., min_length=1, max_length=64)
    timeout_ms: int = Field(30_000, ge=100, le=300_000)

    @field_validator("args")
    @classmethod
    def _bounded(cls, value: list[str]) -> list[str]:
        if json_size(value) > MAX_PARAMS_BYTES:
            raise ValueError(f"must be at most {MAX_PARAMS_BYTES} bytes as JSON")
        return value


class CustomScriptRequest(BaseModel):
    """POST /api/v1/script (admin): register or replace a custom script."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(..., pattern=NAME_PATTERN, description="what tasks name in script_name")
    command: list[StrictStr] = Field(
        ..., min_length=1, max_length=64, description="argv, run without a shell"
    )
    platform: Platform = Platform.GENERIC
    timeout_secs: int = Field(1800, ge=1, le=24 * 3600)
    hosts: list[StrictStr] = Field(
        default_factory=list,
        max_length=1000,
        description="agent ids that have the program; empty: every host",
    )
    description: str = Field("", max_length=500)

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        for i, arg in enumerate(value):
            if "\x00" in arg or len(arg) > 4096:
                raise ValueError(f"[{i}] must be at most 4096 characters without NUL")
        if not value[0].strip():
            raise ValueError("[0] must name the program")
        return value


class AdbSetting(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Strict: a security switch is turned on by `true`, not by a 1 or a "yes" coerced.
    enabled: StrictBool


# What the scheduler keeps and answers ------------------------------------------------
class CustomProgram(BaseModel):
    """A registered custom script as a run carries it to the agent."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    command: list[str]
    platform: Platform = Platform.GENERIC
    timeout_secs: int = 1800
    hosts: list[str] = Field(default_factory=list)


class CustomScriptView(CustomProgram):
    description: str = ""
    registered_by: str = ""
    registered_at: datetime | None = None


class LeaseView(BaseModel):
    """A live lease, as GET /api/v1/rpc/session lists it (never its session id)."""

    model_config = ConfigDict(extra="ignore")

    lease_id: str
    serial: str
    label: str = ""
    actor: str = ""
    agent_id: str | None = None
    task_id: int | None = None
    created_at: datetime
    expires_at: datetime | None = None
    ttl_secs: int | None = None


class RpcDeviceView(BaseModel):
    """GET /api/v1/rpc/devices: online phones, busy with a task or a lease."""

    model_config = ConfigDict(extra="ignore")

    serial: str
    model: str | None = None
    android_version: str | None = None
    host: str | None = None
    agent_id: str | None = None
    online: bool = True
    busy: bool = False
    task_id: int | None = None
    leased: bool = False
    lease_label: str | None = None


class LeaseCheck(BaseModel):
    """The scheduler's answer to a lease check: where the phone is and what is allowed."""

    model_config = ConfigDict(extra="ignore")

    lease_id: str
    serial: str
    agent_id: str
    actor: str = ""
    adb_enabled: bool = False


# Agent calls ------------------------------------------------------------------------
DeviceCallKind = Literal["jsonrpc", "hierarchy", "screenshot", "adb"]


class DeviceCall(Message):
    """Gateway -> `agent.<id>.device`: one call on one phone, already authorised."""

    serial: str
    kind: DeviceCallKind
    method: str = ""
    params: list[Any] | dict[str, Any] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    timeout: float = 10.0
    lease_id: str = ""


class DeviceCallMeta(BaseModel):
    """The first message of an answer: the outcome, then `chunks` body messages follow.

    `code` is the envelope code for a failure (0 on success) so the gateway answers
    with what the agent found (device gone 40901, phone error 40001, timeout 50301)."""

    model_config = ConfigDict(extra="ignore")

    code: int = 0
    message: str = "success"
    content_type: str = "application/json"
    size: int = 0
    chunks: int = 0


class CustomScriptSpec(CustomScriptView):
    """A custom script as GET /api/v1/script lists it beside `post` and the plugins."""

    config_schema: dict[str, Any] = Field(default_factory=dict)
    builtin: bool = False
    kind: Literal["custom"] = "custom"
