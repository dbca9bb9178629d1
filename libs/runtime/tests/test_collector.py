"""The collector setting every service applies once it has started."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from fleet_runtime.collector import YOUNG_COLLECTION_EVERY, settle


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def young_collections_while_handling(batches: int) -> int:
    """Young collections while handling `batches` batches of 1,000 messages, each
    message a few objects that live until its batch is done (a RunBatch, a fetch of
    reports): what a flood looks like to the collector."""
    before = gc.get_stats()[0]["collections"]
    for b in range(batches):
        batch = [{"id": i, "steps": [b, i], "headers": {"n": [i]}} for i in range(1_000)]
        del batch
    return gc.get_stats()[0]["collections"] - before


@pytest.mark.usefixtures("restored_collector")
def test_a_settled_service_collects_far_less_often_for_the_same_work() -> None:
    gc.set_threshold(700, 10, 10)  # CPython's default, whatever the test process had
    by_default = young_collections_while_handling(100)
    settle()
    settled = young_collections_while_handling(100)
    assert by_default > 100
    assert settled <= by_default / 10


@pytest.mark.usefixtures("restored_collector")
def test_a_settled_service_still_frees_cycles_on_its_own() -> None:
    settle()
    assert gc.get_freeze_count() > 0  # what existed at start is out of later scans

    class Node:
        other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    # No explicit collect: enough allocations trigger one, as they would in a service.
    keep = [[i] for i in range(YOUNG_COLLECTION_EVERY * 2)]
    assert gone() is None
    del keep
