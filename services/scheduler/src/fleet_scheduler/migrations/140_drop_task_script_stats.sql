-- `task_script_stats` (partition, script, status) is `task_counts` (partition, script,
-- source, status) summed over sources: its one reader, the metrics' snapshot, sums
-- `task_counts` now, and every task created or moved between statuses writes two
-- counters instead of three (the third upsert was a third of the trigger's writes, on
-- the partitions' counter rows that every report transaction holds until it commits).
-- A (script, status) series at zero that only the dropped table still had is gone from
-- /metrics; every series with tasks behind it, or with a zero in `task_counts`, stays.
ALTER FUNCTION task_script_stats_apply() RENAME TO task_counts_apply;
ALTER TRIGGER task_script_stats_insert ON tasks RENAME TO task_counts_insert;
ALTER TRIGGER task_script_stats_update ON tasks RENAME TO task_counts_update;
ALTER TRIGGER task_script_stats_delete ON tasks RENAME TO task_counts_delete;

CREATE OR REPLACE FUNCTION task_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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
        )
        INSERT INTO task_counts AS c (partition, script_name, source, status, count)
        SELECT partition, script_name, source, status, sum(n) FROM delta
        GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4
        ON CONFLICT (partition, script_name, source, status)
        DO UPDATE SET count = c.count + EXCLUDED.count;
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
        )
        INSERT INTO task_counts AS c (partition, script_name, source, status, count)
        SELECT partition, script_name, source, status, sum(n) FROM delta
        GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4
        ON CONFLICT (partition, script_name, source, status)
        DO UPDATE SET count = c.count + EXCLUDED.count;
    ELSE
        WITH delta AS (
            SELECT partition, serial, script_name, source, status, -count(*) AS n FROM old_rows
            WHERE NOT deleted GROUP BY 1, 2, 3, 4, 5
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_counts AS c (partition, script_name, source, status, count)
        SELECT partition, script_name, source, status, sum(n) FROM delta
        GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4
        ON CONFLICT (partition, script_name, source, status)
        DO UPDATE SET count = c.count + EXCLUDED.count;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION task_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_serial_counts, task_counts;
    RETURN NULL;
END
$$;

DROP TABLE task_script_stats;
