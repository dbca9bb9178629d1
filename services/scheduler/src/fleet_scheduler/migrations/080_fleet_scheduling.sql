-- Fleet-scale scheduling: device groups, automatic retries, recurring schedules, webhooks.
-- Groups, schedules and webhooks are read models of their events (rebuilt with the rest);
-- webhook secrets and delivery attempts are operational records kept outside the log.
CREATE SEQUENCE group_ids;
CREATE SEQUENCE schedule_ids;
CREATE SEQUENCE webhook_ids;

CREATE TABLE groups (
    id         bigint PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE group_devices (
    group_id bigint NOT NULL,
    serial   text   NOT NULL,
    PRIMARY KEY (group_id, serial)
);
CREATE INDEX group_devices_serial ON group_devices (serial);

CREATE TABLE schedules (
    id           bigint PRIMARY KEY,
    spec         jsonb       NOT NULL,
    enabled      boolean     NOT NULL,
    created_at   timestamptz NOT NULL,
    defined_at   timestamptz NOT NULL,
    last_fire_at timestamptz
);

-- One row per fire: (schedule, fire time) is the fire's identity.
CREATE TABLE schedule_fires (
    schedule_id bigint      NOT NULL,
    fire_at     timestamptz NOT NULL,
    task_ids    bigint[]    NOT NULL,
    skipped     text        NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);

CREATE TABLE webhooks (
    id            bigint PRIMARY KEY,
    url           text        NOT NULL,
    event_types   text[]      NOT NULL,
    description   text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL,
    from_position bigint      NOT NULL
);

CREATE TABLE webhook_secrets (
    hook_id bigint PRIMARY KEY,
    secret  text NOT NULL
);

CREATE TABLE webhook_deliveries (
    id          bigserial PRIMARY KEY,
    hook_id     bigint      NOT NULL,
    delivery_id text        NOT NULL,
    event_type  text        NOT NULL,
    attempt     integer     NOT NULL,
    status_code integer,
    error       text,
    delivered   boolean     NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (hook_id, id DESC);
-- A 2xx answer is recorded once; a redelivered message finds it and does not send again.
CREATE UNIQUE INDEX webhook_delivered_once ON webhook_deliveries (hook_id, delivery_id)
    WHERE delivered;

ALTER TABLE tasks
    ADD COLUMN group_name   text,
    ADD COLUMN retry_policy jsonb,
    ADD COLUMN schedule_id  bigint,
    ADD COLUMN batch_id     text,
    ADD COLUMN reason_class text,
    ADD COLUMN auto_retries integer NOT NULL DEFAULT 0,
    -- false from a failure until the retry policy has looked at it (bookkeeping: a
    -- rebuild leaves it true, so old failures are never retried by surprise).
    ADD COLUMN retry_checked boolean NOT NULL DEFAULT true;
CREATE INDEX tasks_schedule_active ON tasks (schedule_id)
    WHERE schedule_id IS NOT NULL AND state IN ('pending', 'dispatched', 'running');
CREATE INDEX tasks_batch ON tasks (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX tasks_autoretry ON tasks (id) WHERE NOT retry_checked;
