"""Publishing what the agent saw to the REPORTS stream, with ids and retries.

Each report carries its own message id as `Nats-Msg-Id`, so a retry after a lost ack
is stored once. A run's outcome is retried for as long as the agent runs: losing it
would leave its task running for ever in the scheduler's eyes, since the agent keeps
heartbeating. Once the agent is stopping, retries are bounded: a stopping agent must not
hang on a dead bus (the scheduler fails its runs when it restarts or goes silent).

The agent sends through `outbox.ReportOutbox`, which coalesces reports into batches and
retries each batch by these same rules; `publish_report` is the rule for one message.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from fleet_agent.metrics import REPORTS_LOST
from fleet_contracts.agent import Report
from fleet_contracts.subjects import report_subject
from fleet_runtime.bus import headers_for

log = structlog.get_logger(__name__)


async def publish_report(
    js: JetStreamContext,
    report: Report,
    *,
    attempts: int = 15,
    ack_wait: float = 2.0,
    until: asyncio.Event | None = None,
) -> bool:
    """Store `report` on REPORTS; False (and an error logged) if every attempt failed.

    With `until`, attempts are not counted until that event is set (the agent stopping);
    after it, `attempts` more are made at most.
    """
    kind = str(type(report).model_fields["type"].default)
    subject = report_subject(report.agent_id, kind)
    payload = report.to_bytes()
    headers = headers_for(report)
    delay = 0.1
    attempt = 0
    while attempt < attempts:
        if until is None or until.is_set():
            attempt += 1
        try:
            await js.publish(subject, payload, headers=headers, timeout=ack_wait)
            return True
        except (NatsError, TimeoutError) as exc:
            log.warning("report.retry", type=kind, attempt=attempt, error=str(exc) or repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    log.error("report.lost", type=kind, message_id=report.message_id)
    REPORTS_LOST.inc()
    return False
