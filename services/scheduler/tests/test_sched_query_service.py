"""The queries as a NATS micro service: ops find every scheduler, its endpoints and
their counts with `$SRV` requests (`nats micro ls`, `nats micro stats fleet-scheduler`)."""

from __future__ import annotations

import json

from fleet_contracts.codes import ErrorCode
from fleet_contracts.queries import QUERY_SUBJECTS, GetStats
from fleet_contracts.subjects import QUERY_SERVICE, SCHEDULER_QUEUE
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Bus


async def test_each_scheduler_answers_discovery_with_its_id_and_its_query_counts(
    bus: Bus, scheduler: Scheduler, settings: SchedulerSettings
) -> None:
    for _ in range(2):
        assert (await bus.query(GetStats())).ok
    bad = await bus.nc.request(QUERY_SUBJECTS[GetStats], b"{not json", timeout=5)
    assert json.loads(bad.data)["code"] == ErrorCode.INVALID_PARAMETERS

    ping = json.loads((await bus.nc.request(f"$SRV.PING.{QUERY_SERVICE}", b"", timeout=5)).data)
    assert ping["name"] == QUERY_SERVICE
    assert ping["metadata"]["scheduler_id"] == settings.scheduler_id

    stats = json.loads((await bus.nc.request(f"$SRV.STATS.{QUERY_SERVICE}", b"", timeout=5)).data)
    assert stats["id"] == ping["id"]
    endpoints = {e["name"]: e for e in stats["endpoints"]}
    assert endpoints["GetStats"]["subject"] == QUERY_SUBJECTS[GetStats]
    assert endpoints["GetStats"]["queue_group"] == SCHEDULER_QUEUE
    # A query the scheduler could not read is answered, as an error, and counted.
    assert endpoints["GetStats"]["num_requests"] == 3
    # Every query the gateway may ask has its endpoint.
    assert {e["subject"] for e in stats["endpoints"]} == set(QUERY_SUBJECTS.values())
