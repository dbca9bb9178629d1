"""Failpoints: named places where a fault test can make the process die on purpose.

`FLEET_FAILPOINT=<name>[:<n>]`, read once at start, makes the process SIGKILL itself the
n-th time (default: the first) it reaches `failpoint(<name>)`; unset, a failpoint costs
one comparison. The places are the windows a crash is hardest on, e.g.
`commands.after_commit` (committed, not yet acked) and `dispatch.after_claim` (a run
recorded as dispatched, not yet sent), so tests kill exactly there instead of at
random moments.
"""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger(__name__)


def _parse(spec: str) -> tuple[str, int]:
    name, _, nth = spec.partition(":")
    return name.strip(), int(nth) if nth.strip().isdigit() else 1


_ARMED, _NTH = _parse(os.environ.get("FLEET_FAILPOINT", ""))
_passed = 0


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no clean-up) if this is the armed failpoint's n-th pass."""
    global _passed
    if name != _ARMED:
        return
    _passed += 1
    if _passed == _NTH:
        log.warning("failpoint.kill", failpoint=name, nth=_NTH)
        os.kill(os.getpid(), signal.SIGKILL)
