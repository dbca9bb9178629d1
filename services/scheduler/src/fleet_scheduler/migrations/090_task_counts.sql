-- Totals for every filter `GET /task` takes (status, serial, script_name, source),
-- so a list never counts the table. Two counters of tasks not deleted:
--   task_serial_counts (serial, script, source, status): a filter naming a serial sums
--     the few rows under that serial (primary key prefix);
--   task_counts (script, source, status): any filter without a serial sums a table of
--     (scripts x 2 sources x 4 statuses) rows; stats are it grouped by status.
-- Both are kept, with task_script_stats (051), by ONE statement-level trigger function
-- over the transition tables: one grouped delta per statement, whichever projection
-- path (row by row or set-wise, live or rebuild) wrote the tasks.
CREATE TABLE task_serial_counts (
    serial      text     NOT NULL,
    script_name text     NOT NULL,
    source      text     NOT NULL,
    status      smallint NOT NULL,
    count       bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (serial, script_name, source, status)
);

CREATE TABLE task_counts (
    script_name text     NOT NULL,
    source      text     NOT NULL,
    status      smallint NOT NULL,
    count       bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (script_name, source, status)
);

INSERT INTO task_serial_counts (serial, script_name, source, status, count)
SELECT serial, script_name, source, status, count(*) FROM tasks WHERE NOT deleted
GROUP BY 1, 2, 3, 4;

INSERT INTO task_counts (script_name, source, status, count)
SELECT script_name, source, status, sum(count) FROM task_serial_counts GROUP BY 1, 2, 3;

-- One delta, three counters. Counter rows are upserted in key order, so two
-- transactions touching the same counters lock them in the same order. The three
-- branches differ only in the delta: each names only the transition tables its
-- trigger declares (a static statement per branch is planned once per session).
CREATE OR REPLACE FUNCTION task_script_stats_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH delta AS (
            SELECT serial, script_name, source, status, count(*) AS n FROM new_rows
            WHERE NOT deleted GROUP BY 1, 2, 3, 4
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        ), by_kind AS (
            INSERT INTO task_counts AS c (script_name, source, status, count)
            SELECT script_name, source, status, sum(n) FROM delta
            GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
            ON CONFLICT (script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_script_stats AS s (script_name, status, count)
        SELECT script_name, status, sum(n) FROM delta
        GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2
        ON CONFLICT (script_name, status) DO UPDATE SET count = s.count + EXCLUDED.count;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Most updates (a version, a due time, progress) move no task between counters:
        -- they cost one pass over the changed rows (ids never change), no counter row
        -- written.
        PERFORM 1 FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.serial, o.script_name, o.source, o.status, o.deleted)
              IS DISTINCT FROM (n.serial, n.script_name, n.source, n.status, n.deleted)
        LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        WITH delta AS (
            SELECT serial, script_name, source, status, sum(d) AS n FROM (
                SELECT serial, script_name, source, status, -1 AS d FROM old_rows WHERE NOT deleted
                UNION ALL
                SELECT serial, script_name, source, status, 1 FROM new_rows WHERE NOT deleted
            ) moved GROUP BY 1, 2, 3, 4 HAVING sum(d) <> 0
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        ), by_kind AS (
            INSERT INTO task_counts AS c (script_name, source, status, count)
            SELECT script_name, source, status, sum(n) FROM delta
            GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
            ON CONFLICT (script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_script_stats AS s (script_name, status, count)
        SELECT script_name, status, sum(n) FROM delta
        GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2
        ON CONFLICT (script_name, status) DO UPDATE SET count = s.count + EXCLUDED.count;
    ELSE
        WITH delta AS (
            SELECT serial, script_name, source, status, -count(*) AS n FROM old_rows
            WHERE NOT deleted GROUP BY 1, 2, 3, 4
        ), by_serial AS (
            INSERT INTO task_serial_counts AS c (serial, script_name, source, status, count)
            SELECT serial, script_name, source, status, n FROM delta ORDER BY 1, 2, 3, 4
            ON CONFLICT (serial, script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        ), by_kind AS (
            INSERT INTO task_counts AS c (script_name, source, status, count)
            SELECT script_name, source, status, sum(n) FROM delta
            GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
            ON CONFLICT (script_name, source, status)
            DO UPDATE SET count = c.count + EXCLUDED.count
        )
        INSERT INTO task_script_stats AS s (script_name, status, count)
        SELECT script_name, status, sum(n) FROM delta
        GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2
        ON CONFLICT (script_name, status) DO UPDATE SET count = s.count + EXCLUDED.count;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row or statement trigger of the kinds above: emptying the tasks
-- (a rebuild, a bench reseed) empties their counters with them.
CREATE FUNCTION task_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_serial_counts, task_counts, task_script_stats;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_truncate();
