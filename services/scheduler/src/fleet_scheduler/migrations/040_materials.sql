-- The material library's read model: one row per library item, from `material-<id>`
-- streams. The bytes live in the `materials` object store bucket, named by sha256;
-- one live item per distinct content.
CREATE SEQUENCE material_ids;

CREATE TABLE materials (
    id           bigint PRIMARY KEY,
    sha256       text        NOT NULL,
    name         text        NOT NULL,
    size         bigint      NOT NULL,
    kind         text        NOT NULL,
    content_type text        NOT NULL,
    tags         text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz,
    deleted      boolean     NOT NULL DEFAULT false,
    version      integer     NOT NULL
);
CREATE UNIQUE INDEX materials_live_sha ON materials (sha256) WHERE NOT deleted;
CREATE INDEX materials_list ON materials (id DESC) WHERE NOT deleted;
CREATE INDEX materials_tags ON materials USING gin (tags) WHERE NOT deleted;
