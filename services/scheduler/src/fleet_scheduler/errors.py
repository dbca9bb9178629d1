"""Why a command was not applied: refused for a reason the caller can act on, or the
database was away (try again later), or the message itself cannot be stored."""

from __future__ import annotations

import asyncpg

from fleet_contracts.codes import ErrorCode


class Rejected(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# A message handled while these are raised must come back later (nak), not be answered:
# the database restarting is not the command's fault.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def database_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE)


def failure_code(exc: BaseException) -> ErrorCode:
    """The code for a message that fails on its own content (a NUL byte in a text, an
    id past 64 bits): redelivering it would fail the same way forever."""
    if isinstance(exc, asyncpg.DataError | OverflowError | ValueError):
        return ErrorCode.INVALID_PARAMETERS
    return ErrorCode.INTERNAL
