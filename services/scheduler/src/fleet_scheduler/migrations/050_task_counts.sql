-- Counters of tasks per (script, state), kept by triggers on the tasks read model, so
-- they change in the transaction that appended the events (like task_stats) and a
-- metrics scrape reads a few rows instead of counting the table. Triggers rather than
-- code in the projections: every path that writes `tasks` (projections, rebuild, any
-- later set-wise repository) keeps them right without knowing about them.
-- Deleted tasks are not counted, as in task_stats. State: pending, dispatched, running,
-- completed, failed (status 0 is pending + dispatched).
CREATE TABLE task_counts (
    script_name text   NOT NULL,
    state       text   NOT NULL,
    count       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (script_name, state)
);

INSERT INTO task_counts (script_name, state, count)
SELECT script_name, state, count(*) FROM tasks WHERE NOT deleted GROUP BY 1, 2;

-- Inserts come in batches (one statement per create): one upsert per statement.
CREATE FUNCTION task_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts (script_name, state, count)
    SELECT script_name, state, count(*) FROM added WHERE NOT deleted GROUP BY 1, 2
    ON CONFLICT (script_name, state) DO UPDATE SET count = task_counts.count + EXCLUDED.count;
    RETURN NULL;
END $$;

-- Updates: only rows whose state, script or deleted flag changed reach this (see WHEN).
CREATE FUNCTION task_counts_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND NOT OLD.deleted THEN
        UPDATE task_counts SET count = count - 1
        WHERE script_name = OLD.script_name AND state = OLD.state;
    END IF;
    IF TG_OP = 'UPDATE' AND NOT NEW.deleted THEN
        INSERT INTO task_counts (script_name, state, count)
        VALUES (NEW.script_name, NEW.state, 1)
        ON CONFLICT (script_name, state) DO UPDATE SET count = task_counts.count + 1;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION task_counts_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_inserted();

CREATE TRIGGER task_counts_update AFTER UPDATE OF state, script_name, deleted ON tasks
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.script_name IS DISTINCT FROM NEW.script_name
          OR OLD.deleted IS DISTINCT FROM NEW.deleted)
    EXECUTE FUNCTION task_counts_moved();

CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_moved();

-- `rebuild-read-models` truncates tasks and replays the log into it.
CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_emptied();
