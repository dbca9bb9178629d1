"""A command refused for a reason the caller can act on, with its error code."""

from __future__ import annotations

from fleet_contracts.codes import ErrorCode


class Rejected(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
