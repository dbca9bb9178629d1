"""Reading a histogram around a scenario: only what was observed in between counts."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.histograms import bucket_bound, buckets_of, share_within


def test_the_quantile_bound_counts_only_observations_between_the_scrapes() -> None:
    registry = CollectorRegistry()
    wait = Histogram("wait_seconds", "", buckets=(0.1, 0.5, 1.0), registry=registry)
    for seconds in (5.0, 5.0, 5.0):  # before the scenario: all slow
        wait.observe(seconds)
    before = buckets_of(generate_latest(registry).decode(), "wait_seconds")
    for seconds in [0.05] * 90 + [0.3] * 9 + [0.7]:
        wait.observe(seconds)
    after = buckets_of(generate_latest(registry).decode(), "wait_seconds")
    assert bucket_bound(before, after, 0.5) == 0.1
    assert bucket_bound(before, after, 0.99) == 0.5
    assert bucket_bound(before, after, 1.0) == 1.0
    assert share_within(before, after, 0.1) == 0.9


def test_nothing_observed_or_no_such_histogram() -> None:
    assert buckets_of("", "wait_seconds") == {}
    assert math.isnan(bucket_bound({}, {}, 0.99))
    assert math.isnan(share_within({math.inf: 3.0}, {math.inf: 3.0}, 1.0))
