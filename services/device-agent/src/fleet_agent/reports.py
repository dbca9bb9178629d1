"""Publishing what the agent saw to the REPORTS stream, with ids and bounded retries.

Each report carries its own message id as `Nats-Msg-Id`, so a retry after a lost ack
is stored once. Retries are bounded: a stopping agent must not hang on a dead bus.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from fleet_contracts.agent import Report
from fleet_contracts.subjects import report_subject
from fleet_runtime.bus import headers_for

log = structlog.get_logger(__name__)


async def publish_report(
    js: JetStreamContext, report: Report, *, attempts: int = 8, timeout: float = 2.0
) -> bool:
    """Store `report` on REPORTS; False (and an error logged) if every attempt failed."""
    subject = report_subject(report.agent_id, report.type)
    payload = report.to_bytes()
    headers = headers_for(report)
    delay = 0.1
    for attempt in range(1, attempts + 1):
        try:
            await js.publish(subject, payload, headers=headers, timeout=timeout)
            return True
        except (NatsError, TimeoutError) as exc:
            log.warning(
                "report.retry", type=report.type, attempt=attempt, error=str(exc) or repr(exc)
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    log.error("report.lost", type=report.type, message_id=report.message_id)
    return False


async def publish_many(js: JetStreamContext, reports: list[Report]) -> None:
    """Publish a batch (start-up inventory) with a bounded number in flight."""
    limit = asyncio.Semaphore(64)

    async def one(report: Report) -> None:
        async with limit:
            await publish_report(js, report)

    await asyncio.gather(*(one(r) for r in reports))
