"""Queries: gateway -> scheduler over core NATS request/reply, answered with `Reply`.

Each query subject in `subjects` has one request model here; the reply's `data` is
the matching view in `rest`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet_contracts.codes import TaskSource, TaskStatus
from fleet_contracts.rest import FLEET_PAGE_DEFAULT, FLEET_PAGE_MAX, MAX_NAME_LENGTH
from fleet_contracts.subjects import (
    QUERY_ACCOUNT_LIST,
    QUERY_ADB_HOSTS,
    QUERY_COMMAND_RESULT,
    QUERY_CUSTOM_SCRIPTS,
    QUERY_DEVICE_LIST,
    QUERY_LEASE_CHECK,
    QUERY_LEASE_LIST,
    QUERY_MATERIAL_GET,
    QUERY_MATERIAL_LIST,
    QUERY_PING,
    QUERY_RPC_DEVICES,
    QUERY_TASK_EVENTS,
    QUERY_TASK_GET,
    QUERY_TASK_LIST,
    QUERY_TASK_STATS,
)


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    correlation_id: str = ""

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ListTasks(Query):
    status: TaskStatus | None = None
    serial: str | None = Field(None, max_length=MAX_NAME_LENGTH)
    script_name: str | None = Field(None, max_length=MAX_NAME_LENGTH)
    source: TaskSource | None = None
    page: int = Field(1, ge=1)
    page_size: int = Field(20, ge=1, le=100)


class GetTask(Query):
    task_id: int


class GetStats(Query):
    pass


class TaskEvents(Query):
    task_id: int


class ListDevices(Query):
    online: bool | None = None
    page: int = Field(1, ge=1)
    page_size: int = Field(FLEET_PAGE_DEFAULT, ge=1, le=FLEET_PAGE_MAX)


class ListAccounts(Query):
    serial: str | None = Field(None, max_length=MAX_NAME_LENGTH)
    page: int = Field(1, ge=1)
    page_size: int = Field(FLEET_PAGE_DEFAULT, ge=1, le=FLEET_PAGE_MAX)


class GetCommandResult(Query):
    command_id: str


class Ping(Query):
    pass


class CheckLease(Query):
    """Is `lease_id` live (database clock) and for `serial`? 40303 when not."""

    lease_id: str
    serial: str


class ListLeases(Query):
    pass


class ListRpcDevices(Query):
    pass


class ListCustomScripts(Query):
    pass


class ListAdbHosts(Query):
    pass


class ListMaterials(Query):
    tag: str | None = None
    kind: str | None = None
    page: int = Field(1, ge=1)
    page_size: int = Field(20, ge=1, le=100)


class GetMaterial(Query):
    """One live item by id or by content digest (exactly one of the two)."""

    material_id: int | None = None
    sha256: str | None = None


QUERY_SUBJECTS: dict[type[Query], str] = {
    ListTasks: QUERY_TASK_LIST,
    GetTask: QUERY_TASK_GET,
    GetStats: QUERY_TASK_STATS,
    TaskEvents: QUERY_TASK_EVENTS,
    ListDevices: QUERY_DEVICE_LIST,
    ListAccounts: QUERY_ACCOUNT_LIST,
    GetCommandResult: QUERY_COMMAND_RESULT,
    Ping: QUERY_PING,
    CheckLease: QUERY_LEASE_CHECK,
    ListLeases: QUERY_LEASE_LIST,
    ListRpcDevices: QUERY_RPC_DEVICES,
    ListCustomScripts: QUERY_CUSTOM_SCRIPTS,
    ListAdbHosts: QUERY_ADB_HOSTS,
    ListMaterials: QUERY_MATERIAL_LIST,
    GetMaterial: QUERY_MATERIAL_GET,
}
