-- Tasks not deleted, by script and status: what `fleet_tasks_by_script` reports.
-- Kept by statement-level triggers over the transition tables, so one statement (a
-- retry-all over 150,000 tasks, or one event's projection) costs one grouped upsert,
-- in the same transaction as the log, whichever projection path made the change.
CREATE TABLE task_script_stats (
    script_name text     NOT NULL,
    status      smallint NOT NULL,
    count       bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (script_name, status)
);

INSERT INTO task_script_stats (script_name, status, count)
SELECT script_name, status, count(*) FROM tasks WHERE NOT deleted GROUP BY 1, 2;

CREATE FUNCTION task_script_stats_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch names only the transition tables its trigger declares.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_script_stats AS s (script_name, status, count)
        SELECT script_name, status, count(*) FROM new_rows WHERE NOT deleted GROUP BY 1, 2
        ON CONFLICT (script_name, status) DO UPDATE SET count = s.count + EXCLUDED.count;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO task_script_stats AS s (script_name, status, count)
        SELECT script_name, status, sum(d) FROM (
            SELECT script_name, status, -1 AS d FROM old_rows WHERE NOT deleted
            UNION ALL
            SELECT script_name, status, 1 FROM new_rows WHERE NOT deleted
        ) moved GROUP BY 1, 2 HAVING sum(d) <> 0
        ON CONFLICT (script_name, status) DO UPDATE SET count = s.count + EXCLUDED.count;
    ELSE
        INSERT INTO task_script_stats AS s (script_name, status, count)
        SELECT script_name, status, -count(*) FROM old_rows WHERE NOT deleted GROUP BY 1, 2
        ON CONFLICT (script_name, status) DO UPDATE SET count = s.count + EXCLUDED.count;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_script_stats_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_script_stats_apply();
CREATE TRIGGER task_script_stats_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_script_stats_apply();
CREATE TRIGGER task_script_stats_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_script_stats_apply();
