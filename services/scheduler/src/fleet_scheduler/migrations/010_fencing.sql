-- Fencing and late reports: how a task ended (a run the scheduler gave up on may still
-- be ended by the phone), the agent process a run was sent to, and since when a running
-- task has been missing from its live agent's heartbeats.
ALTER TABLE tasks ADD COLUMN ended_by text;
ALTER TABLE tasks ADD COLUMN incarnation text NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN unheld_since timestamptz;
UPDATE tasks SET ended_by = CASE
    WHEN state = 'completed' THEN 'completed'
    WHEN reason = 'stopped' THEN 'stopped'
    WHEN reason LIKE 'agent lost:%' OR reason LIKE '% never confirmed start' THEN 'lost'
    ELSE 'failed' END
WHERE state IN ('completed', 'failed');
ALTER TABLE agents ADD COLUMN incarnation text NOT NULL DEFAULT '';
-- The relay's own record of EVENTS: the stream sequence its last published position got.
ALTER TABLE relay_position ADD COLUMN stream_seq bigint NOT NULL DEFAULT 0;
-- Reports refused unread: the subject named one agent and the body another.
CREATE TABLE refused_reports (
    id          bigserial PRIMARY KEY,
    subject     text        NOT NULL,
    agent_id    text,
    message_id  text,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX command_results_age ON command_results (recorded_at);
