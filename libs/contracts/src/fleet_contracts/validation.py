"""Turning pydantic validation errors into one message a person can act on.

Both the gateway (REST bodies) and the scheduler (commands from anywhere) need the
same wording: `field: problem`, with nested fields dotted (`script_config.captions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class FieldRuleError(ValueError):
    """A rule across fields that still belongs to one field: the error names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        else:
            parts.append(str(item))
    return ".".join(parts) or "body"


def _problem(err: ErrorDetails) -> str:
    msg = err["msg"]
    # pydantic prefixes our own ValueError messages; the field name already says enough.
    for noise in ("Value error, ", "Assertion failed, "):
        if msg.startswith(noise):
            msg = msg[len(noise) :]
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required"
    return msg


def describe_errors(errors: Iterable[ErrorDetails], prefix: str = "") -> str:
    """Every problem as `field: problem`, joined by `; `, in the order pydantic found them."""
    seen: list[str] = []
    for err in errors:
        loc: list[int | str] = [
            p for p in err["loc"] if p not in ("function-after", "function-before")
        ]
        rule = (err.get("ctx") or {}).get("error")
        if isinstance(rule, FieldRuleError):
            path = field_path(loc, prefix)
            where = rule.field if path == "body" else f"{path}.{rule.field}"
            line = f"{where}: {rule.problem}"
        else:
            line = f"{field_path(loc, prefix)}: {_problem(err)}"
        if line not in seen:
            seen.append(line)
    return "; ".join(seen)


def describe(exc: ValidationError, prefix: str = "") -> str:
    return describe_errors(exc.errors(), prefix)
