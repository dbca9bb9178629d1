"""Task status codes and the error-code table of the REST contract.

TikMatrix publishes 40001, 40002, 40003, 40301, 40401 and 50001; the others follow the
same scheme: the first three digits are the HTTP status the gateway answers with.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class TaskStatus(IntEnum):
    PENDING = 0
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3


class TaskSource(StrEnum):
    UI = "ui"
    API = "api"


class ErrorCode(IntEnum):
    OK = 0
    INVALID_PARAMETERS = 40001
    MISSING_SCRIPT_NAME = 40002
    SCRIPT_NOT_SUPPORTED = 40003
    UNAUTHORIZED = 40101
    PLAN_NO_API_ACCESS = 40301
    ROLE_NOT_ALLOWED = 40302
    LEASE_REQUIRED = 40303
    ADB_DISABLED = 40304
    CROSS_SITE = 40305
    NOT_FOUND = 40401
    WRONG_STATE = 40901
    BODY_TOO_LARGE = 41301
    TOO_MANY_STREAMS = 42901
    INTERNAL = 50001
    UNAVAILABLE = 50301

    @property
    def http_status(self) -> int:
        """The HTTP status that goes with the code (its first three digits)."""
        return 200 if self is ErrorCode.OK else int(self) // 100


class Plan(StrEnum):
    STARTER = "starter"
    PRO = "pro"
    TEAM = "team"
    BUSINESS = "business"

    @property
    def api_enabled(self) -> bool:
        return self is not Plan.STARTER

    @property
    def device_limit(self) -> int:
        return PLAN_DEVICE_LIMITS[self]


class Role(StrEnum):
    """What a key may do: viewers read, operators also act on tasks and devices, admins
    also manage keys and what runs on the hosts (custom scripts, adb passthrough)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return ROLE_RANK[self] >= ROLE_RANK[needed]


ROLE_RANK: dict[Role, int] = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


PLAN_DEVICE_LIMITS: dict[Plan, int] = {
    Plan.STARTER: 5,
    Plan.PRO: 20,
    Plan.TEAM: 100,
    Plan.BUSINESS: 1000,
}
