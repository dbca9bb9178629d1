-- Schedulers share the serial partitions through leases on their `log_partitions` rows
-- (owner, epoch, lease_expires: migration 100). To split them fairly each scheduler
-- must know how many are alive: a member row it renews with its leases, on the
-- database's clock like them (`partition_owners.py`).
CREATE TABLE scheduler_members (
    scheduler_id text PRIMARY KEY,
    expires      timestamptz NOT NULL
);
