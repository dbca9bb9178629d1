-- A partitioned log. Tasks and devices belong to one of P partitions by serial
-- (`fleet_partition`, P fixed at install: `@PARTITIONS@` is the count configured when
-- this file was applied); every other stream (accounts, schedules, groups, hooks,
-- materials, scripts, leases) to partition 0, the fleet partition. Each partition has
-- its own gap-free position (`log_partitions.next_position`, the last one taken) and
-- its own lock (its row, taken FOR UPDATE by every transaction that appends to it), so
-- writers of different partitions no longer wait for each other. Schedulers lease
-- partitions through the same rows (`owner`, `epoch`, `lease_expires`).
CREATE FUNCTION fleet_partition(serial text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (1 + ('x' || substr(md5(serial), 1, 7))::bit(28)::int % @PARTITIONS@)::smallint $$;

CREATE TABLE log_partitions (
    id            smallint PRIMARY KEY,
    next_position bigint NOT NULL DEFAULT 0,
    owner         text,
    epoch         bigint NOT NULL DEFAULT 0,
    lease_expires timestamptz
);
INSERT INTO log_partitions (id) SELECT generate_series(0, @PARTITIONS@);

ALTER TABLE tasks ADD COLUMN partition smallint GENERATED ALWAYS AS (fleet_partition(serial)) STORED;
ALTER TABLE devices ADD COLUMN partition smallint GENERATED ALWAYS AS (fleet_partition(serial)) STORED;

ALTER TABLE events ADD COLUMN partition smallint NOT NULL DEFAULT 0,
    ADD COLUMN partition_position bigint;
-- The events written before partitions: each to its stream's partition, numbered in
-- log order within it.
WITH parts AS (
    SELECT e.position,
           COALESCE(t.partition,
                    CASE WHEN e.stream_id LIKE 'device-%'
                         THEN fleet_partition(substr(e.stream_id, 8)) ELSE 0 END) AS p
    FROM events e LEFT JOIN tasks t ON e.stream_id = 'task-' || t.id
), numbered AS (
    SELECT position, p, row_number() OVER (PARTITION BY p ORDER BY position) AS n FROM parts
)
UPDATE events e SET partition = numbered.p, partition_position = numbered.n
FROM numbered WHERE e.position = numbered.position;
ALTER TABLE events ALTER COLUMN partition DROP DEFAULT,
    ALTER COLUMN partition_position SET NOT NULL;
CREATE UNIQUE INDEX events_partition_position ON events (partition, partition_position);
UPDATE log_partitions l SET next_position = m.last
FROM (SELECT partition, max(partition_position) AS last FROM events GROUP BY 1) m
WHERE l.id = m.partition;

-- What the relay has published, per partition (it tails each one).
CREATE TABLE relay_partitions (
    partition smallint PRIMARY KEY,
    position  bigint NOT NULL DEFAULT 0
);
INSERT INTO relay_partitions (partition, position)
SELECT l.id, COALESCE((SELECT max(e.partition_position) FROM events e
                       WHERE e.partition = l.id
                         AND e.position <= (SELECT position FROM relay_position WHERE id = 1)), 0)
FROM log_partitions l;
