-- Counters per partition. Transactions writing tasks of different partitions will run
-- at once (each locks only its own `log_partitions` rows); counters shared by every
-- partition would make them queue on the same counter rows, and deadlock when two take
-- them in different orders. So `task_counts` and `task_script_stats` gain the task's
-- partition as the first column of their key: a transaction only ever upserts its own
-- partitions' rows, and readers sum over partitions. `task_serial_counts` is keyed by
-- serial, and a serial belongs to one partition: it is partition-aligned already.
ALTER TABLE task_counts RENAME TO task_counts_shared;
ALTER TABLE task_script_stats RENAME TO task_script_stats_shared;
ALTER TABLE task_counts_shared RENAME CONSTRAINT task_counts_pkey TO task_counts_shared_pkey;
ALTER TABLE task_script_stats_shared
    RENAME CONSTRAINT task_script_stats_pkey TO task_script_stats_shared_pkey;

CREATE TABLE task_counts (
    partition   smallint NOT NULL,
    script_name text     NOT NULL,
    source      text     NOT NULL,
    status      smallint NOT NULL,
    count       bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (partition, script_name, source, status)
);

CREATE TABLE task_script_stats (
    partition   smallint NOT NULL,
    script_name text     NOT NULL,
    status      smallint NOT NULL,
    count       bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (partition, script_name, status)
);

-- From the serial counters (a row per serial and kind, not per task), zero rows kept as
-- they are.
INSERT INTO task_counts (partition, script_name, source, status, count)
SELECT fleet_partition(serial), script_name, source, status, sum(count)
FROM task_serial_counts GROUP BY 1, 2, 3, 4;

INSERT INTO task_script_stats (partition, script_name, status, count)
SELECT partition, script_name, status, sum(count) FROM task_counts GROUP BY 1, 2, 3;
-- `fleet_tasks_by_script` reports every (script, status) row, zeros too: a series the
-- shared table had keeps its zero (under partition 1, which always exists).
INSERT INTO task_script_stats (partition, script_name, status, count)
SELECT 1, o.script_name, o.status, 0 FROM task_script_stats_shared o
WHERE NOT EXISTS (SELECT 1 FROM task_script_stats n
                  WHERE n.script_name = o.script_name AND n.status = o.status);

DROP TABLE task_counts_shared, task_script_stats_shared;

-- As in 090, one delta and three counters, now grouped by partition too. `partition`
-- is the tasks' generated column, which the transition tables carry (old rows with the
-- stored value, new rows with the value computed for the new serial). Counter rows are
-- upserted in key order, partition first, so transactions that do share a partition
-- lock its rows in one order.
CREATE OR REPLACE FUNCTION task_script_stats_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH delta AS (
            SELECT partition, serial, script_name, source, status, count(*) AS n FROM new_rows
            WHERE NOT deleted GROUP BY 1, 2, 3, 4, 5
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        ), by_kind AS (
            INSERT INTO task_counts AS c (partition, script_name, source, status, count)
            SELECT partition, script_name, source, status, sum(n) FROM delta
            GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4
            ON CONFLICT (partition, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_script_stats AS s (partition, script_name, status, count)
        SELECT partition, script_name, status, sum(n) FROM delta
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (partition, script_name, status)
        DO UPDATE SET count = s.count + EXCLUDED.count;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Most updates (a version, a due time, progress) move no task between counters:
        -- they cost one pass over the changed rows (ids never change), no counter row
        -- written. The serial decides the partition, so comparing it covers both.
        PERFORM 1 FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.serial, o.script_name, o.source, o.status, o.deleted)
              IS DISTINCT FROM (n.serial, n.script_name, n.source, n.status, n.deleted)
        LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        WITH delta AS (
            SELECT partition, serial, script_name, source, status, sum(d) AS n FROM (
                SELECT partition, serial, script_name, source, status, -1 AS d FROM old_rows
                WHERE NOT deleted
                UNION ALL
                SELECT partition, serial, script_name, source, status, 1 FROM new_rows
                WHERE NOT deleted
            ) moved GROUP BY 1, 2, 3, 4, 5 HAVING sum(d) <> 0
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        ), by_kind AS (
            INSERT INTO task_counts AS c (partition, script_name, source, status, count)
            SELECT partition, script_name, source, status, sum(n) FROM delta
            GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4
            ON CONFLICT (partition, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_script_stats AS s (partition, script_name, status, count)
        SELECT partition, script_name, status, sum(n) FROM delta
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (partition, script_name, status)
        DO UPDATE SET count = s.count + EXCLUDED.count;
    ELSE
        WITH delta AS (
            SELECT partition, serial, script_name, source, status, -count(*) AS n FROM old_rows
            WHERE NOT deleted GROUP BY 1, 2, 3, 4, 5
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        ), by_kind AS (
            INSERT INTO task_counts AS c (partition, script_name, source, status, count)
            SELECT partition, script_name, source, status, sum(n) FROM delta
            GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4
            ON CONFLICT (partition, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_script_stats AS s (partition, script_name, status, count)
        SELECT partition, script_name, status, sum(n) FROM delta
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (partition, script_name, status)
        DO UPDATE SET count = s.count + EXCLUDED.count;
    END IF;
    RETURN NULL;
END
$$;
-- The TRUNCATE trigger (`task_counts_truncate`, 090) names the tables, not their
-- columns: it empties the new ones as it did the old.
