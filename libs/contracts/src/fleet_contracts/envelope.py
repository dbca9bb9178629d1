"""The REST envelope `{code, message, data}` every gateway response is wrapped in."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from fleet_contracts.codes import ErrorCode

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    model_config = ConfigDict(extra="ignore")

    code: int = 0
    message: str = "success"
    data: T | None = None


def ok(data: Any = None, message: str = "success") -> dict[str, Any]:
    return {"code": 0, "message": message, "data": data}


def error(code: ErrorCode, message: str, data: Any = None) -> dict[str, Any]:
    return {"code": int(code), "message": message, "data": data}
