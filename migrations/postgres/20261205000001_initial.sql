-- synchro on Postgres: the same tables as on SQLite (migrations/sqlite/),
-- in one migration. Instants are µs since the epoch (bigint), as on SQLite,
-- so that every backend answers the same. Keys are COLLATE "C" (byte
-- order, as SQLite's BINARY): `export` and every keyset walk order rows
-- the same on both backends.

-- The database's clock in µs: what lease expiries are judged by, so that
-- replicas whose clocks disagree still agree on who holds a lease.
CREATE FUNCTION synchro_now_us() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint $$;

-- Records: the latest known version of every upstream object. `data` is
-- `json`, not `jsonb`: it keeps the payload's text exactly as received (the
-- export contract); jsonb would reorder keys and drop duplicates. Query it
-- with `data ->> 'field'` or index `(data::jsonb -> ...)` expressions.
CREATE TABLE records (
    tenant      text COLLATE "C" NOT NULL,
    source      text COLLATE "C" NOT NULL,
    id          text COLLATE "C" NOT NULL,
    kind        text    NOT NULL,
    updated_at  text    NOT NULL,
    updated_us  bigint  NOT NULL,
    deleted     boolean NOT NULL DEFAULT false,
    data        json    NOT NULL,
    stored_at   bigint  NOT NULL,
    -- The full listing (Calendar clear-and-resync) that last returned it.
    listing     bigint,
    PRIMARY KEY (tenant, source, id)
);

-- Progress of each source, committed with the records it follows.
CREATE TABLE progress (
    tenant      text COLLATE "C" NOT NULL,
    source      text COLLATE "C" NOT NULL,
    kind        text   NOT NULL,
    phase       text   NOT NULL,
    state       text   NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (tenant, source)
);

-- One row per sync run.
CREATE TABLE runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       text   NOT NULL UNIQUE,
    tenant       text COLLATE "C" NOT NULL,
    source       text COLLATE "C" NOT NULL,
    kind         text   NOT NULL,
    started_at   bigint NOT NULL,
    finished_at  bigint,
    outcome      text   NOT NULL CHECK (outcome IN ('running', 'success', 'failed', 'cancelled')),
    error        text,
    pages        bigint NOT NULL DEFAULT 0,
    upserted     bigint NOT NULL DEFAULT 0,
    deleted      bigint NOT NULL DEFAULT 0,
    -- When a scheduled run was due; NULL for runs nobody scheduled.
    scheduled_at bigint
);
CREATE INDEX runs_by_source ON runs (tenant, source, id);
CREATE INDEX runs_running ON runs (tenant, source) WHERE outcome = 'running';

-- Import-state reports to send back upstream, queued with their record;
-- claimed before they are sent so that no two processes send one.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant           text COLLATE "C" NOT NULL,
    source           text COLLATE "C" NOT NULL,
    record_id        text COLLATE "C" NOT NULL,
    completed_at     text   NOT NULL,
    import_state     text   NOT NULL CHECK (import_state IN ('success', 'fail')),
    message          text,
    status           text   NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         bigint NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  bigint NOT NULL DEFAULT 0,
    created_at       bigint NOT NULL,
    sent_at          bigint,
    claimed_by       text,
    claim_expires_at bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, source, record_id, completed_at)
);
CREATE INDEX outbox_pending ON outbox (tenant, source, id) WHERE status = 'pending';

-- One run per source across processes and replicas (DESIGN.md §3b): the
-- lease row outlives runs so that `epoch` only grows; `run_id IS NULL`
-- means free. `expires_at` is on the database clock (synchro_now_us).
CREATE TABLE leases (
    tenant      text COLLATE "C" NOT NULL,
    source      text COLLATE "C" NOT NULL,
    epoch       bigint NOT NULL,
    run_id      text,
    host        text,
    node        text,
    pid         bigint,
    acquired_at bigint,
    expires_at  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, source)
);

-- The row a failing daemon rewrites with 1 MiB (stored uncompressed) to
-- learn that the database takes writes again.
CREATE TABLE write_probe (
    id         integer PRIMARY KEY CHECK (id = 1),
    written_at bigint NOT NULL,
    pad        bytea
);
ALTER TABLE write_probe ALTER COLUMN pad SET STORAGE EXTERNAL;
