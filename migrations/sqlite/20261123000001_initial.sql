-- Records: the latest known version of every upstream object, keyed by
-- (tenant, source, id). `updated_at` is the upstream timestamp as received
-- (export contract); `updated_us` is the same instant in µs UTC, which is
-- what "newer" compares.
CREATE TABLE records (
    tenant      TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    updated_us  INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    data        TEXT    NOT NULL,
    stored_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, source, id)
) WITHOUT ROWID;

-- Progress of each source: the kind's own JSON state (cursor, token,
-- watermark...), committed in the same transaction as the records it follows.
CREATE TABLE progress (
    tenant      TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    phase       TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, source)
) WITHOUT ROWID;

-- One row per sync run, for `status`, metrics and post-mortems.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT    NOT NULL UNIQUE,
    tenant      TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('running', 'success', 'failed', 'cancelled')),
    error       TEXT,
    pages       INTEGER NOT NULL DEFAULT 0,
    upserted    INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_source ON runs (tenant, source, id);

-- Import-state reports to send back upstream (Contentor), written in the
-- same transaction as the record they are about. One row per
-- (request, completed date): the unique key is what makes "at least once,
-- never again after success" hold across restarts and resets.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    completed_at  TEXT    NOT NULL,
    import_state  TEXT    NOT NULL CHECK (import_state IN ('success', 'fail')),
    message       TEXT,
    status        TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    sent_at       INTEGER,
    UNIQUE (tenant, source, record_id, completed_at)
);
CREATE INDEX outbox_pending ON outbox (status, next_attempt_at);
