-- The event log, the read models derived from it, and the bookkeeping of consumers.
CREATE TABLE events (
    position    bigserial PRIMARY KEY,
    stream_id   text        NOT NULL,
    version     integer     NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);

CREATE SEQUENCE task_ids;

CREATE TABLE tasks (
    id              bigint PRIMARY KEY,
    serial          text        NOT NULL,
    username        text,
    script_name     text        NOT NULL,
    script_config   jsonb       NOT NULL,
    source          text        NOT NULL,
    state           text        NOT NULL,
    status          smallint    NOT NULL,
    reason          text,
    wait_reason     text        NOT NULL DEFAULT '',
    retry_count     integer     NOT NULL DEFAULT 0,
    min_interval    integer     NOT NULL DEFAULT 0,
    max_interval    integer     NOT NULL DEFAULT 0,
    start_time      text,
    agent_id        text,
    dispatch_id     text,
    progress        integer,
    created_at      timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    dispatched_at   timestamptz,
    lease_until     timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    interval_anchor bigint,
    deleted         boolean     NOT NULL DEFAULT false,
    version         integer     NOT NULL
);
CREATE INDEX tasks_list ON tasks (id DESC) WHERE NOT deleted;
CREATE INDEX tasks_status ON tasks (status, id DESC) WHERE NOT deleted;
CREATE INDEX tasks_serial ON tasks (serial, id DESC) WHERE NOT deleted;
CREATE INDEX tasks_script ON tasks (script_name, id DESC) WHERE NOT deleted;
CREATE INDEX tasks_source ON tasks (source, id DESC) WHERE NOT deleted;
CREATE INDEX tasks_due ON tasks (serial, due_at, id) WHERE state = 'pending' AND NOT deleted;
CREATE INDEX tasks_active ON tasks (agent_id) WHERE state IN ('dispatched', 'running');

CREATE TABLE task_stats (
    status smallint PRIMARY KEY,
    count  bigint NOT NULL DEFAULT 0
);
INSERT INTO task_stats (status) VALUES (0), (1), (2), (3);

CREATE TABLE devices (
    serial           text PRIMARY KEY,
    agent_id         text,
    host             text,
    model            text,
    android_version  text,
    battery          integer,
    online           boolean     NOT NULL DEFAULT false,
    busy             boolean     NOT NULL DEFAULT false,
    current_task_id  bigint,
    last_seen        timestamptz,
    last_task_id     bigint,
    last_finished_at timestamptz
);
CREATE INDEX devices_agent ON devices (agent_id);

CREATE TABLE accounts (
    username text PRIMARY KEY,
    platform text NOT NULL,
    serial   text NOT NULL,
    source   text NOT NULL
);
CREATE INDEX accounts_serial ON accounts (serial);

CREATE TABLE agents (
    agent_id   text PRIMARY KEY,
    host       text,
    last_seen  timestamptz NOT NULL,
    lost       boolean     NOT NULL DEFAULT false
);

CREATE TABLE command_results (
    command_id  text PRIMARY KEY,
    result      jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE processed_reports (
    message_id  text PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE relay_position (
    id       integer PRIMARY KEY CHECK (id = 1),
    position bigint  NOT NULL
);
INSERT INTO relay_position VALUES (1, 0);
