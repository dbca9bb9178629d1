-- The correlation id of the request that created a task: its run command carries it,
-- so the agent's log lines for the run join the REST request's.
ALTER TABLE tasks ADD COLUMN correlation_id text;
