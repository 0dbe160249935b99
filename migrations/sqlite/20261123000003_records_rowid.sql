-- Records move from a WITHOUT ROWID table to a rowid table with a unique
-- index on (tenant, source, id). WITHOUT ROWID kept each ~1 KB payload
-- inside the primary-key b-tree, in key order: a listing whose ids do not
-- arrive in that order (random calendar ids, DS numbers compared as text)
-- split and rewrote pages all over the tree, and SQLite itself advises
-- WITHOUT ROWID only for rows far smaller than a page. Now payloads are
-- appended in arrival order and only the small keys are sorted.
CREATE TABLE records_by_rowid (
    tenant      TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    updated_us  INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    data        TEXT    NOT NULL,
    stored_at   INTEGER NOT NULL,
    listing     INTEGER
);
INSERT INTO records_by_rowid
    (tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at, listing)
SELECT tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at, listing
FROM records ORDER BY tenant, source, id;
DROP TABLE records;
ALTER TABLE records_by_rowid RENAME TO records;
CREATE UNIQUE INDEX records_key ON records (tenant, source, id);
