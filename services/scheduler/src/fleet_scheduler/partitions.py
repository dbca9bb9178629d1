"""Which partition of the log a stream belongs to, and the order partitions are locked in.

Tasks and devices belong to one of `count` partitions (1..count) by serial, so a phone's
tasks and the phone itself are always in one partition; every other stream (accounts,
schedules, groups, hooks, materials, scripts, leases) belongs to partition 0, the fleet
partition. The count is fixed when the log is installed (`migrations/100_partitions.sql`
computes the same function in SQL as `fleet_partition(serial)`; a test holds the two
equal).

Locks are taken in one order by every transaction: serial partitions ascending, the
fleet partition last. A transaction that finds it must append to the fleet partition
after it locked its serial partitions (a custom script's lease at dispatch, an account a
report names) can therefore always take it without risking a deadlock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

FLEET = 0
"""The partition of every stream that is not a task's or a device's."""
DEFAULT_COUNT = 16
TASK_PREFIX = "task-"
DEVICE_PREFIX = "device-"


def of_serial(serial: str, count: int) -> int:
    """The partition of a phone (1..count): md5's first 28 bits, as `fleet_partition`."""
    digest = hashlib.md5(serial.encode(), usedforsecurity=False).hexdigest()
    return 1 + int(digest[:7], 16) % count


def of_stream(stream_id: str, count: int, serial: str | None = None) -> int | None:
    """The partition of a stream: a device's from its id, a task's from its serial
    (None when the serial is not given), anything else the fleet partition."""
    if stream_id.startswith(DEVICE_PREFIX):
        return of_serial(stream_id.removeprefix(DEVICE_PREFIX), count)
    if stream_id.startswith(TASK_PREFIX):
        return None if serial is None else of_serial(serial, count)
    return FLEET


def task_id_of(stream_id: str) -> int | None:
    """The task id of a task stream, None for any other stream."""
    if stream_id.startswith(TASK_PREFIX):
        key = stream_id.removeprefix(TASK_PREFIX)
        return int(key) if key.isdigit() else None
    return None


def lock_order(partitions: Iterable[int]) -> list[int]:
    """Serial partitions ascending, then the fleet partition."""
    return sorted(set(partitions), key=lambda p: (p == FLEET, p))


LOCK_ORDER_SQL = "ORDER BY id = 0, id"
"""`lock_order` in SQL: rows locked with `FOR UPDATE` are locked in this order."""
