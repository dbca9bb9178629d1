-- Device sessions (leases) and custom scripts: read models of the lease.*, script.*
-- and host.* events. A lease row exists while the lease lives; expiry is decided on
-- the database clock against expires_at (NULL for a lease made for a task's run).
CREATE TABLE leases (
    lease_id    text PRIMARY KEY,
    serial      text        NOT NULL,
    agent_id    text,
    label       text        NOT NULL DEFAULT '',
    actor       text        NOT NULL DEFAULT '',
    ttl_secs    integer,
    task_id     bigint,
    dispatch_id text,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz
);
-- One program at a time per phone: at most one lease not made for a task.
CREATE UNIQUE INDEX leases_free_serial ON leases (serial) WHERE task_id IS NULL;
CREATE INDEX leases_expiry ON leases (expires_at) WHERE task_id IS NULL;
CREATE INDEX leases_task ON leases (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE custom_scripts (
    name          text PRIMARY KEY,
    command       jsonb       NOT NULL,
    platform      text        NOT NULL,
    timeout_secs  integer     NOT NULL,
    hosts         jsonb       NOT NULL,
    description   text        NOT NULL DEFAULT '',
    registered_by text        NOT NULL DEFAULT '',
    registered_at timestamptz NOT NULL
);

CREATE TABLE host_settings (
    agent_id    text PRIMARY KEY,
    adb_enabled boolean     NOT NULL DEFAULT false,
    changed_by  text        NOT NULL DEFAULT '',
    changed_at  timestamptz NOT NULL
);
