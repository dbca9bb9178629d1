"""Which serial partitions a scheduler leases: a pure decision, no I/O (`partition_owners`
runs it on the database's rows and clock).

Rules:
- every live scheduler (a member whose heartbeat has not run out) gets a fair share of
  the P serial partitions: P // n, and one more for the first P % n members by id, so
  the shares add up to P exactly and every member computes the same ones;
- a scheduler keeps (renews) the partitions it holds, up to its share, and gives back
  the rest, highest first, so a newcomer finds free ones at its next turn;
- it takes free partitions, or ones whose lease ran out (their holder stopped renewing:
  killed, or cut off from the database), lowest first, up to its share. A lease still
  running is never taken: its holder may be claiming in it right now;
- the fleet partition (0) is nobody's: commands and reports of the fleet are handled by
  whichever scheduler receives them, under its lock.
Each take bumps the partition's epoch, so a change of hands is visible in the log of
leases and to a holder that compares epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from fleet_scheduler.partitions import FLEET


@dataclass(frozen=True)
class PartitionLease:
    partition: int
    owner: str | None
    expires: datetime | None

    def held_by(self, member: str, now: datetime) -> bool:
        return self.owner == member and self.expires is not None and self.expires > now

    def free(self, now: datetime) -> bool:
        return self.owner is None or self.expires is None or self.expires <= now


@dataclass(frozen=True)
class Plan:
    keep: tuple[int, ...]
    """Held and within the share: renewed."""
    take: tuple[int, ...]
    """Free or run out: taken now (epoch bumped)."""
    release: tuple[int, ...]
    """Held past the share: given back."""

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self.keep + self.take)


def share(member: str, members: Iterable[str], partitions: int) -> int:
    """How many of `partitions` `member` should hold among the live `members`."""
    live = sorted(set(members) | {member})
    base, extra = divmod(partitions, len(live))
    return base + (1 if live.index(member) < extra else 0)


def plan(
    member: str, leases: Sequence[PartitionLease], members: Iterable[str], now: datetime
) -> Plan:
    """What `member` keeps, takes and gives back of the serial partitions `leases`."""
    serial = sorted(
        (lease for lease in leases if lease.partition != FLEET), key=lambda x: x.partition
    )
    fair = share(member, members, len(serial))
    held = [lease.partition for lease in serial if lease.held_by(member, now)]
    keep, release = held[:fair], held[fair:]
    free = [lease.partition for lease in serial if lease.free(now) and lease.partition not in held]
    take = free[: max(0, fair - len(keep))]
    return Plan(tuple(keep), tuple(take), tuple(release))
