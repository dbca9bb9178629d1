"""Commands: what the gateway asks the scheduler to do, and what it answers.

The gateway publishes a command to the COMMANDS stream with `Nats-Msg-Id` = the
command's `message_id` and a `Fleet-Reply-To` header naming an inbox; the scheduler
handles it once (a redelivered or republished id returns the recorded result) and
publishes the `CommandResult` to that inbox after commit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.messages import Message
from fleet_contracts.rest import AccountRequest, CreateTaskRequest
from fleet_contracts.sessions import CustomScriptRequest
from fleet_contracts.subjects import command_subject


class Command(Message):
    """A request to change state. `actor` names the API key (or `local`) behind it."""

    actor: str = "local"


class CreateTasks(Command):
    type: Literal["create_tasks"] = "create_tasks"
    request: CreateTaskRequest
    source: TaskSource = TaskSource.API
    device_limit: int | None = Field(
        None, description="the caller's plan: phones its unfinished tasks may occupy (None: any)"
    )

    def request_digest(self) -> str:
        """A fingerprint of what was asked: an Idempotency-Key reused with another body
        is told apart from a retry by it (key order and spacing do not count)."""
        canonical = json.dumps(
            self.request.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


class StopTask(Command):
    type: Literal["stop_task"] = "stop_task"
    task_id: int


class DeleteTask(Command):
    type: Literal["delete_task"] = "delete_task"
    task_id: int


class BatchDeleteTasks(Command):
    type: Literal["batch_delete_tasks"] = "batch_delete_tasks"
    task_ids: list[int]


class RetryTask(Command):
    type: Literal["retry_task"] = "retry_task"
    task_id: int


class RetryAllTasks(Command):
    type: Literal["retry_all_tasks"] = "retry_all_tasks"


class RegisterAccount(Command):
    type: Literal["register_account"] = "register_account"
    account: AccountRequest


class RemoveAccount(Command):
    type: Literal["remove_account"] = "remove_account"
    username: str


class LeaseDevice(Command):
    """Lend `serial` to the caller's program. `device_limit` is the caller's plan's
    (None: no limit); live leases and running tasks together must stay within it."""

    type: Literal["lease_device"] = "lease_device"
    lease_id: str
    serial: str
    label: str = ""
    ttl_secs: int
    device_limit: int | None = None


class RenewLease(Command):
    type: Literal["renew_lease"] = "renew_lease"
    lease_id: str
    ttl_secs: int | None = None


class ReleaseLease(Command):
    type: Literal["release_lease"] = "release_lease"
    lease_id: str


class RegisterCustomScript(Command):
    type: Literal["register_custom_script"] = "register_custom_script"
    script: CustomScriptRequest


class RemoveCustomScript(Command):
    type: Literal["remove_custom_script"] = "remove_custom_script"
    name: str


class SetHostAdb(Command):
    type: Literal["set_host_adb"] = "set_host_adb"
    agent_id: str
    enabled: bool


class AddMaterial(Command):
    """Name and tag bytes the gateway has stored in the `materials` bucket."""

    type: Literal["add_material"] = "add_material"
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    size: int = Field(..., ge=1)
    name: str
    content_type: str = "application/octet-stream"
    tags: list[str] = Field(default_factory=list)


class TagMaterial(Command):
    type: Literal["tag_material"] = "tag_material"
    material_id: int
    tags: list[str]


class DeleteMaterial(Command):
    type: Literal["delete_material"] = "delete_material"
    material_id: int


AnyCommand = Annotated[
    CreateTasks
    | StopTask
    | DeleteTask
    | BatchDeleteTasks
    | RetryTask
    | RetryAllTasks
    | RegisterAccount
    | RemoveAccount
    | LeaseDevice
    | RenewLease
    | ReleaseLease
    | RegisterCustomScript
    | RemoveCustomScript
    | SetHostAdb
    | AddMaterial
    | TagMaterial
    | DeleteMaterial,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(AnyCommand)

_SUBJECTS: dict[str, str] = {
    "create_tasks": command_subject("task", "create"),
    "stop_task": command_subject("task", "stop"),
    "delete_task": command_subject("task", "delete"),
    "batch_delete_tasks": command_subject("task", "batch_delete"),
    "retry_task": command_subject("task", "retry"),
    "retry_all_tasks": command_subject("task", "retry_all"),
    "register_account": command_subject("account", "register"),
    "remove_account": command_subject("account", "remove"),
    "lease_device": command_subject("lease", "grant"),
    "renew_lease": command_subject("lease", "renew"),
    "release_lease": command_subject("lease", "release"),
    "register_custom_script": command_subject("script", "register"),
    "remove_custom_script": command_subject("script", "remove"),
    "set_host_adb": command_subject("host", "adb"),
    "add_material": command_subject("material", "add"),
    "tag_material": command_subject("material", "tag"),
    "delete_material": command_subject("material", "delete"),
}


def subject_for(command: AnyCommand) -> str:
    return _SUBJECTS[command.type]


def parse_command(raw: bytes | str) -> AnyCommand:
    return COMMAND_ADAPTER.validate_json(raw)


class Reply(BaseModel):
    """The answer to a command or a query: the REST envelope's fields, ready to send."""

    model_config = ConfigDict(extra="ignore")

    code: int = 0
    message: str = "success"
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    @classmethod
    def failure(cls, code: ErrorCode, message: str, data: Any = None) -> Reply:
        return cls(code=int(code), message=message, data=data)


class CommandResult(Reply):
    command_id: str = ""
    request_digest: str = Field("", description="CreateTasks.request_digest() it answered")


def request_digest(command: Command) -> str:
    return command.request_digest() if isinstance(command, CreateTasks) else ""
