"""Failure classes: a bounded name for why a task failed, derived from its reason text.

Reasons are free text written by agents and schedulers ("agent lost: host-1 restarted",
"device disconnected", "post step 'share' failed: …"). Automatic retries, webhooks and
operators filter on a small fixed set instead, derived here in one pure function, so an
event recorded before classes existed gets the same class as a new one.
"""

from __future__ import annotations

import re
from enum import StrEnum


class FailureClass(StrEnum):
    AGENT_LOST = "agent_lost"
    START_TIMEOUT = "start_timeout"
    DEVICE_GONE = "device_gone"
    UI_TIMEOUT = "ui_timeout"
    MISSING_FILE = "missing_file"
    INVALID_CONFIG = "invalid_config"
    STOPPED = "stopped"
    SCRIPT_ERROR = "script_error"
    OTHER = "other"


RETRYABLE = frozenset(
    {
        FailureClass.AGENT_LOST,
        FailureClass.START_TIMEOUT,
        FailureClass.DEVICE_GONE,
        FailureClass.UI_TIMEOUT,
    }
)
"""Classes an automatic retry may act on: the phone or host failed, not the request.
A missing file or an invalid config fails again however often it is tried."""

# First match wins; the order puts the specific before the general.
_RULES: tuple[tuple[re.Pattern[str], FailureClass], ...] = (
    (re.compile(r"^stopped\b|; agent \S+ reported no end$"), FailureClass.STOPPED),
    (re.compile(r"^agent lost\b|\bagent stopping\b"), FailureClass.AGENT_LOST),
    (re.compile(r"never confirmed start"), FailureClass.START_TIMEOUT),
    (re.compile(r"device disconnected|not attached|was unplugged"), FailureClass.DEVICE_GONE),
    (re.compile(r"no element matching|\bstep '.*' failed"), FailureClass.UI_TIMEOUT),
    (
        re.compile(
            r"does not exist on this agent host|is not a regular file|is not readable"
            r"|is not a folder on this agent host|file\(s\), the post needs|no library folder"
            r"|is not a readable (file|folder)"
        ),
        FailureClass.MISSING_FILE,
    ),
    (
        re.compile(r"outside the material roots|^script_config\b|is not installed|not supported"),
        FailureClass.INVALID_CONFIG,
    ),
    (re.compile(r"crashed:|^phone error:"), FailureClass.SCRIPT_ERROR),
)


def classify(reason: str) -> FailureClass:
    """The class of a failure reason; OTHER when no rule names it."""
    for pattern, failure_class in _RULES:
        if pattern.search(reason):
            return failure_class
    return FailureClass.OTHER
