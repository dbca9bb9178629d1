"""Text PostgreSQL cannot store: NUL characters and unpaired surrogates.

Pydantic accepts both in a `str`; the scheduler's database refuses them, so the
gateway turns them into a 400 naming the field before anything is sent.
"""

from __future__ import annotations

from typing import Any

from fleet_api.errors import ApiError
from fleet_contracts.codes import ErrorCode


def _problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds an unpaired UTF-16 surrogate; send valid Unicode text"
    return None


def _first_bad(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        problem = _problem(value)
        return (path, problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _first_bad(str(key), where) or _first_bad(item, where)
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _first_bad(item, f"{path}[{i}]")
            if found:
                return found
    return None


def require_storable(value: Any, path: str = "") -> None:
    """Raise a 400 naming the first field whose text cannot be stored."""
    found = _first_bad(value, path)
    if found:
        raise ApiError(ErrorCode.INVALID_PARAMETERS, f"{found[0] or 'body'}: {found[1]}")
