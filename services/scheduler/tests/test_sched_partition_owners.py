"""Schedulers sharing the serial partitions through leases: fair shares, hand-over when
one goes, and a claim that holds only the partitions still leased to it."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from fleet_contracts.commands import CreateTasks
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler import dispatch
from fleet_scheduler.app import Scheduler, open_pool
from fleet_scheduler.ownership import PartitionLease, plan, share
from fleet_scheduler.partition_owners import holders
from fleet_scheduler.settings import SchedulerSettings
from fleet_scheduler.uow import lock_partitions

from .conftest import Bus, FakeAgent, eventually, wait_devices

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=5)
P = 16


def leases(owners: dict[int, tuple[str, datetime]] | None = None) -> list[PartitionLease]:
    owners = owners or {}
    rows = [PartitionLease(0, None, None)]  # the fleet partition: never leased
    for p in range(1, P + 1):
        owner, expires = owners.get(p, (None, None))
        rows.append(PartitionLease(p, owner, expires))
    return rows


def test_shares_add_up_to_every_partition_whoever_computes_them() -> None:
    members = ["s3", "s1", "s2"]
    assert [share(m, members, P) for m in sorted(members)] == [6, 5, 5]
    assert share("s9", [], P) == P


def test_a_lone_scheduler_takes_every_serial_partition() -> None:
    decided = plan("s1", leases(), ["s1"], NOW)
    assert decided.take == tuple(range(1, P + 1))
    assert decided.keep == decided.release == ()


def test_a_holder_gives_back_its_highest_partitions_when_another_joins() -> None:
    held = leases({p: ("s1", LATER) for p in range(1, P + 1)})
    decided = plan("s1", held, ["s1", "s2"], NOW)
    assert decided.keep == tuple(range(1, 9)) and decided.release == tuple(range(9, 17))
    # The newcomer finds nothing free until they are given back.
    assert plan("s2", held, ["s1", "s2"], NOW).owned == frozenset()
    given_back = leases({p: ("s1", LATER) for p in range(1, 9)})
    assert plan("s2", given_back, ["s1", "s2"], NOW).take == tuple(range(9, 17))


def test_a_running_lease_is_never_taken_one_run_out_is() -> None:
    # s2 stopped renewing (killed): its member row and leases run out together.
    rows = leases({p: ("s2", NOW) for p in range(1, 9)} | {p: ("s1", LATER) for p in range(9, 17)})
    assert plan("s1", rows, ["s1"], NOW).take == tuple(range(1, 9))
    # Still running (the holder may be claiming right now), even if it left the members.
    running = leases({p: ("s2", LATER) for p in range(1, 9)})
    assert plan("s1", running, ["s1"], NOW).owned == frozenset(range(9, 17))


def test_its_own_lease_run_out_is_taken_again_not_kept() -> None:
    rows = leases({p: ("s1", NOW - timedelta(seconds=1)) for p in range(1, P + 1)})
    decided = plan("s1", rows, ["s1"], NOW)
    assert decided.keep == () and decided.take == tuple(range(1, P + 1))


# --- Against the database -----------------------------------------------------------


@pytest.fixture
def quick(settings: SchedulerSettings) -> SchedulerSettings:
    return settings.model_copy(update={"scheduler_partition_lease_seconds": 1.0})


@contextlib.asynccontextmanager
async def running(*schedulers: Scheduler) -> AsyncIterator[None]:
    try:
        for s in schedulers:
            await s.start()
        yield
    finally:
        for s in schedulers:
            if s.ctx is not None:
                await s.stop()


async def test_three_schedulers_split_the_partitions_and_the_rest_take_a_leavers_share(
    quick: SchedulerSettings, db: asyncpg.Connection
) -> None:
    s1, s2, s3 = (Scheduler(quick.model_copy(update={"scheduler_id": f"s{i}"})) for i in (1, 2, 3))
    async with running(s1, s2, s3):

        async def split() -> dict[int, str] | None:
            held = await holders(db)
            counts = sorted(Counter(held.values()).values())
            return held if len(held) == P and counts == [5, 5, 6] else None

        held = await eventually(split, what="16 partitions split 6/5/5")
        for s in (s1, s2, s3):
            assert s.ctx is not None
            assert s.ctx.owned == {p for p, o in held.items() if o == s.settings.scheduler_id}
        epochs = dict(await db.fetch("SELECT id, epoch FROM log_partitions WHERE id > 0"))
        await s2.stop()

        async def taken_over() -> dict[int, str] | None:
            now = await holders(db)
            return now if len(now) == P and set(now.values()) == {"s1", "s3"} else None

        after = await eventually(taken_over, what="s2's partitions held by s1 and s3")
        assert sorted(Counter(after.values()).values()) == [8, 8]
        moved = [p for p, owner in held.items() if owner == "s2"]
        later = dict(await db.fetch("SELECT id, epoch FROM log_partitions WHERE id > 0"))
        assert all(later[p] > epochs[p] for p in moved)


async def test_a_claim_holds_only_the_partitions_still_leased_to_its_scheduler(
    settings: SchedulerSettings, bus: Bus, db: asyncpg.Connection
) -> None:
    serials = ["fence-1", "fence-2", "fence-3"]
    async with Scheduler(settings) as sched:
        assert sched.ctx is not None
        assert sched.ctx.owned == frozenset(range(1, P + 1))
        fake = FakeAgent(bus, "fence-agent", serials)
        await fake.start()
        await wait_devices(bus, 3)
        # Another holder's leases, running for an hour: what a takeover leaves behind.
        await db.execute(
            "UPDATE log_partitions SET owner = 'other', epoch = epoch + 1,"
            " lease_expires = now() + interval '1 hour' WHERE id > 0"
        )
        result = await bus.command(
            CreateTasks(request=CreateTaskRequest(serials=serials, script_name="post"))
        )
        assert result.code == 0
        believed = frozenset(range(1, P + 1))  # what this scheduler last knew it held
        sched.ctx.owned = believed
        assert await dispatch.claim(sched.ctx) == []
        states = [r[0] for r in await db.fetch("SELECT state FROM tasks ORDER BY id")]
        assert states == ["pending"] * 3
        # Given back: this scheduler takes them at its next turn and runs the tasks.
        await db.execute("UPDATE log_partitions SET owner = NULL, lease_expires = NULL")

        async def ran() -> bool:
            return {r.serial for r in fake.runs} == set(serials)

        await eventually(ran, what="the tasks run once the partitions are taken back")
        await fake.close()


async def test_a_paused_schedulers_open_transaction_is_ended_and_its_locks_freed(
    settings: SchedulerSettings, db: asyncpg.Connection
) -> None:
    # A scheduler frozen in the middle of a transaction (SIGSTOP, a suspended VM) holds
    # its partitions' locks: the database ends the transaction once it sits idle.
    paused = settings.model_copy(update={"scheduler_idle_transaction_seconds": 1.0})
    pool = await open_pool(paused)
    try:
        conn = await pool.acquire()
        frozen = conn.transaction()
        await frozen.start()
        await lock_partitions(conn, None)
        await db.execute("SET lock_timeout = '10s'")
        async with db.transaction():
            # Waits for the frozen transaction, then gets every partition.
            _, locked = await lock_partitions(db, None)
        assert locked == frozenset(range(0, P + 1))
        # The frozen session is gone (how asyncpg words it depends on when it noticed).
        gone = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        with pytest.raises((*gone, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        pool.terminate()
