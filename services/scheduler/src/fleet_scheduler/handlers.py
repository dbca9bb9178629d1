"""Command handlers: plain functions from (command, current state) to events, no I/O.

The shell (`commands.py`) loads the state a handler needs, calls it, appends what it
returns and records the result; a `Rejected` raised here becomes the command's error
result with nothing applied.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import (
    BatchDeleteTasks,
    CreateTasks,
    RegisterAccount,
    RemoveAccount,
)
from fleet_contracts.events import AccountRegistered, AccountRemoved, TaskCreated
from fleet_contracts.rest import BatchDeleteResult, CreateTaskResult
from fleet_contracts.scripts import (
    ScriptConfigError,
    UnknownScriptError,
    personalise,
    validate_script_config,
)
from fleet_contracts.subjects import account_stream_id, task_stream_id
from fleet_scheduler.errors import Rejected
from fleet_scheduler.schedule import initial_due
from fleet_scheduler.store import NewEvent
from fleet_scheduler.task import StopOnAgent, Task, TaskState


@dataclass
class Outcome:
    events: list[NewEvent] = field(default_factory=list)
    data: Any = None
    effects: list[StopOnAgent] = field(default_factory=list)

    def take(self, task: Task) -> None:
        for i, event in enumerate(task.pending):
            self.events.append(
                NewEvent(task_stream_id(task.id), event, expected_version=task.loaded_version + i)
            )
        self.effects.extend(task.effects)


@dataclass(frozen=True)
class Target:
    serial: str
    username: str | None = None


def _names(values: Iterable[str]) -> str:
    return ", ".join(values)


def check_script(cmd: CreateTasks, plugins: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The create's script_config, validated again here: commands may come from anywhere."""
    try:
        return validate_script_config(cmd.request.script_name, cmd.request.script_config, plugins)
    except UnknownScriptError as exc:
        raise Rejected(ErrorCode.SCRIPT_NOT_SUPPORTED, str(exc)) from exc
    except ScriptConfigError as exc:
        raise Rejected(ErrorCode.INVALID_PARAMETERS, str(exc)) from exc


def plan_targets(
    cmd: CreateTasks,
    known_serials: set[str],
    accounts_by_serial: Mapping[str, Sequence[str]],
    serial_of_account: Mapping[str, str],
) -> list[Target]:
    """One target per task the create makes, or the reason none is made."""
    request = cmd.request
    if request.usernames is not None:
        unknown = [u for u in request.usernames if u not in serial_of_account]
        if unknown:
            raise Rejected(
                ErrorCode.INVALID_PARAMETERS, f"usernames: unknown account(s): {_names(unknown)}"
            )
        return [Target(serial_of_account[u], u) for u in request.usernames]
    serials = request.serials or []
    unknown = [s for s in serials if s not in known_serials]
    if unknown:
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS, f"serials: unknown device(s): {_names(unknown)}"
        )
    if not request.enable_multi_account:
        return [Target(s) for s in serials]
    bare = [s for s in serials if not accounts_by_serial.get(s)]
    if bare:
        raise Rejected(
            ErrorCode.INVALID_PARAMETERS,
            f"enable_multi_account: no accounts known on device(s): {_names(bare)}",
        )
    return [Target(s, u) for s in serials for u in sorted(accounts_by_serial[s])]


def create_tasks(
    cmd: CreateTasks,
    config: dict[str, Any],
    targets: Sequence[Target],
    task_ids: Sequence[int],
    now: datetime,
    zone: ZoneInfo,
    rng: random.Random,
) -> Outcome:
    request = cmd.request
    due_at, reason = initial_due(request.start_time, now, zone)
    outcome = Outcome(data=CreateTaskResult(task_ids=list(task_ids), created_count=len(task_ids)))
    captions = config.get("captions")
    # Spintax is resolved per task; captions without a brace read the same for every
    # task, so their per-character check is not run once per task.
    spins = isinstance(captions, str) and ("{" in captions or "}" in captions)
    template: TaskCreated | None = None
    for task_id, target in zip(task_ids, targets, strict=True):
        own = {
            "task_id": task_id,
            "serial": target.serial,
            "username": target.username,
            "script_config": (
                personalise(request.script_name, config, rng) if spins else dict(config)
            ),
        }
        if template is None:
            # Validated once; the command's other tasks differ only in these fields,
            # whose values are already checked, so they are copies of this one.
            template = event = TaskCreated(
                **own,
                script_name=request.script_name,
                source=cmd.source,
                min_interval=request.min_interval,
                max_interval=request.max_interval,
                start_time=request.start_time,
                due_at=due_at,
                wait_reason=reason,
                batch_id=cmd.message_id,
                created_by=cmd.actor,
                group=request.group,
                retry_policy=(
                    None if request.retry is None else request.retry.model_dump(mode="json")
                ),
            )
        else:
            event = template.model_copy(update=own)
        outcome.events.append(NewEvent(task_stream_id(task_id), event, expected_version=0))
    outcome.data = outcome.data.model_dump()
    return outcome


def _found(task_id: int, state: TaskState | None) -> Task:
    if state is None or state.deleted:
        raise Rejected(ErrorCode.NOT_FOUND, f"task {task_id} not found")
    return Task(state)


def stop_task(task_id: int, state: TaskState | None) -> Outcome:
    task = _found(task_id, state)
    task.stop()
    outcome = Outcome(data={"task_id": task_id})
    outcome.take(task)
    return outcome


def delete_task(task_id: int, state: TaskState | None) -> Outcome:
    task = _found(task_id, state)
    task.delete()
    outcome = Outcome(data={"task_id": task_id})
    outcome.take(task)
    return outcome


def batch_delete(cmd: BatchDeleteTasks, states: Mapping[int, TaskState]) -> Outcome:
    outcome = Outcome()
    deleted: list[int] = []
    missing: list[int] = []
    for task_id in dict.fromkeys(cmd.task_ids):
        state = states.get(task_id)
        if state is None or state.deleted:
            missing.append(task_id)
            continue
        task = Task(state)
        task.delete()
        outcome.take(task)
        deleted.append(task_id)
    outcome.data = BatchDeleteResult(
        deleted_ids=deleted, deleted_count=len(deleted), not_found_ids=missing
    ).model_dump()
    return outcome


def retry_task(task_id: int, state: TaskState | None, now: datetime) -> Outcome:
    task = _found(task_id, state)
    task.retry(now)
    outcome = Outcome(data={"task_id": task_id})
    outcome.take(task)
    return outcome


def register_account(cmd: RegisterAccount, known_serials: set[str]) -> Outcome:
    """Accounts registered through the API win over what agents report for that name."""
    account = cmd.account
    if account.serial not in known_serials:
        raise Rejected(ErrorCode.INVALID_PARAMETERS, f"serial: unknown device {account.serial!r}")
    event = AccountRegistered(
        username=account.username, platform=account.platform, serial=account.serial
    )
    return Outcome(
        events=[NewEvent(account_stream_id(account.username), event)],
        data=account.model_dump(),
    )


def remove_account(cmd: RemoveAccount, exists: bool) -> Outcome:
    if not exists:
        raise Rejected(ErrorCode.NOT_FOUND, f"account {cmd.username!r} not found")
    return Outcome(
        events=[NewEvent(account_stream_id(cmd.username), AccountRemoved(username=cmd.username))],
        data={"username": cmd.username},
    )
