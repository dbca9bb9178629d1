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


AnyCommand = Annotated[
    CreateTasks
    | StopTask
    | DeleteTask
    | BatchDeleteTasks
    | RetryTask
    | RetryAllTasks
    | RegisterAccount
    | RemoveAccount,
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
