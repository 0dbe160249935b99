-- The change feed (`export --since`, `/v1/changes`): every stored change
-- of a record (insert, newer version, tombstone, sweep) takes the next
-- number of one counter, in the transaction that commits it, so that seq
-- order is commit order: SQLite has one writer at a time, and the counter
-- row is read and written inside that writer's transaction. A record keeps
-- the seq of its last change; readers ask for `seq > N`.
ALTER TABLE records ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
-- Existing rows are numbered in the order they were appended.
UPDATE records SET seq = rowid;
CREATE UNIQUE INDEX records_seq ON records (seq);
-- Tombstones are kept `[storage] tombstone_retention`, then purged: this
-- partial index holds only them, so the purge never scans live records.
CREATE INDEX records_tombstones ON records (stored_at) WHERE deleted = 1;

-- `last_seq`: the highest seq handed out (never reused, even when its row
-- is purged). `purged_through`: the highest seq of a change that left no
-- row behind (a purged tombstone, a forgotten source); a reader whose
-- position is below it may have missed a deletion and must resync.
CREATE TABLE change_seq (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq       INTEGER NOT NULL,
    purged_through INTEGER NOT NULL DEFAULT 0
);
INSERT INTO change_seq (id, last_seq, purged_through)
SELECT 1, coalesce(max(seq), 0), 0 FROM records;
