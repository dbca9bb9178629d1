"""Device groups: a name for a set of phones, usable as a task or schedule target."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet_contracts.validation import FieldRuleError

MAX_GROUP_SERIALS = 1000
GROUP_NAME = r"^[^\x00/]+$"


def clean_serials(values: list[str], field: str = "serials") -> list[str]:
    cleaned = [v.strip() for v in values]
    for i, value in enumerate(cleaned):
        if not value:
            raise FieldRuleError(f"{field}[{i}]", "must not be empty")
    return list(dict.fromkeys(cleaned))


class GroupNameRequest(BaseModel):
    """POST /group (with optional serials) and PUT /group/{id} (rename)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=GROUP_NAME)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value


class CreateGroupRequest(GroupNameRequest):
    serials: list[str] = Field(default_factory=list, max_length=MAX_GROUP_SERIALS)

    @field_validator("serials")
    @classmethod
    def _serials(cls, values: list[str]) -> list[str]:
        return clean_serials(values)


class GroupDevicesRequest(BaseModel):
    """POST / DELETE /group/{id}/devices."""

    model_config = ConfigDict(extra="forbid")

    serials: list[str] = Field(..., min_length=1, max_length=MAX_GROUP_SERIALS)

    @field_validator("serials")
    @classmethod
    def _serials(cls, values: list[str]) -> list[str]:
        return clean_serials(values)


class GroupView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: int
    name: str
    serials: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
