-- Who created a task (the API key's name), for the plan's device limit: the phones a
-- key's unfinished tasks occupy are counted per create.
ALTER TABLE tasks ADD COLUMN created_by text;
CREATE INDEX tasks_open_by_creator ON tasks (created_by, serial)
    WHERE status IN (0, 1) AND NOT deleted;
