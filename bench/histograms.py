"""A Prometheus histogram read off a service's /metrics around a scenario: the bucket
that holds a quantile of what was observed in between (a bound, not a value: the
buckets are what a scrape gives)."""

from __future__ import annotations

import math

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Buckets = dict[float, float]
"""Cumulative observation counts by upper bound (`le`), +Inf included."""


def buckets_of(text: str, name: str) -> Buckets:
    """Histogram `name`'s buckets in a /metrics page (empty when it is not there)."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {
                float(s.labels["le"]): s.value for s in family.samples if s.name == f"{name}_bucket"
            }
    return {}


async def scrape_buckets(session: aiohttp.ClientSession, url: str, name: str) -> Buckets:
    async with session.get(url) as response:
        return buckets_of(await response.text(), name)


def bucket_bound(before: Buckets, after: Buckets, q: float) -> float:
    """The upper bound of the first bucket holding the `q` quantile of the observations
    made between the two scrapes; NaN when there were none."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return bound
    return math.inf


def share_within(before: Buckets, after: Buckets, bound: float) -> float:
    """The fraction of the observations between the scrapes at most `bound` (a bucket's)."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    return (after.get(bound, 0.0) - before.get(bound, 0.0)) / total
