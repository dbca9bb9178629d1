"""Reading a service's /metrics the way Prometheus does, for tests: a flat map from
(series name, labels) to value, and the difference between two scrapes."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Series = tuple[str, frozenset[tuple[str, str]]]


class Scrape(dict[Series, float]):
    def value(self, name: str, **labels: str) -> float:
        """The series' value; 0 when it is absent (a counter never moved)."""
        return self.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and want <= ls)

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self)


def parse(text: str) -> Scrape:
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def scrape(url: str) -> Scrape:
    # Async on purpose: the scheduler reads the database on its own event loop while
    # answering, and a blocking call from that loop would wait on itself.
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(url)
    resp.raise_for_status()
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    return parse(resp.text)


def moved(before: Mapping[Series, float], after: Mapping[Series, float], name: str) -> float:
    """How much the series of `name` (all labels summed) grew between two scrapes."""
    return sum(v for (n, _), v in after.items() if n == name) - sum(
        v for (n, _), v in before.items() if n == name
    )


def grew(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much one series grew between two scrapes."""
    return after.value(name, **labels) - before.value(name, **labels)
