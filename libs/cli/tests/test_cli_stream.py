"""The CLI's pure parts: reading the event stream's lines, and following a batch of
tasks to its end from the events that concern it."""

from __future__ import annotations

from fleet_cli.batch import COMPLETED, FAILED, PENDING, RUNNING, Batch
from fleet_cli.sse import ServerEvent, parse


def test_stream_lines_become_events_with_ids_and_comments_skipped() -> None:
    lines = [
        ": ping",
        "id: 41",
        "event: task.created",
        'data: {"a": 1}',
        "",
        "",
        "id:42",
        "data: line one",
        "data: line two",
        "",
        "data: no end yet",
    ]
    assert list(parse(lines)) == [
        ServerEvent(event="task.created", data='{"a": 1}', id="41"),
        ServerEvent(event="message", data="line one\nline two", id="42"),
    ]


def test_a_batch_ends_when_every_task_has_completed_or_failed() -> None:
    batch = Batch.of([1, 2, 3])
    assert not batch.apply("task.started", {"task_id": 99})  # someone else's task
    assert batch.apply("task.started", {"task_id": 1})
    assert batch.statuses == {1: RUNNING, 2: PENDING, 3: PENDING}
    batch.apply("task.completed", {"task_id": 1})
    batch.apply("task.failed", {"task_id": 2, "reason": "element missing: Post"})
    assert not batch.done and batch.finished == 2
    batch.apply("task.stopped", {"task_id": 3, "reason": "stopped"})
    assert batch.done
    assert batch.count(COMPLETED) == 1 and batch.count(FAILED) == 2
    assert batch.failed() == {2: "element missing: Post", 3: "stopped"}


def test_a_retried_task_is_not_finished_and_a_deleted_one_counts_as_failed() -> None:
    batch = Batch.of([1, 2])
    batch.apply("task.failed", {"task_id": 1, "reason": "x"})
    batch.apply("task.retried", {"task_id": 1, "retry_count": 1})
    assert batch.statuses[1] == PENDING and batch.failed() == {}
    batch.seed(2, COMPLETED, None)
    batch.apply("task.deleted", {"task_id": 1})
    assert batch.done and batch.failed() == {1: "deleted"}
    assert not batch.apply("task.progressed", {"task_id": 2, "step": "tap"})
