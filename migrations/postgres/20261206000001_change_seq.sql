-- The change feed (`export --since`, `/v1/changes`): every stored change
-- of a record (insert, newer version, tombstone, sweep) takes the next
-- numbers of one counter row, locked (`FOR UPDATE`) by the committing
-- transaction before its first record write and held until it commits.
-- Transactions that write records therefore commit one after another in
-- the order they took their numbers, across every process and replica: a
-- change committed later never has a smaller seq than one a reader has
-- already seen. (A sequence would not do: numbers taken in one order can
-- commit in another.) A record keeps the seq of its last change.
ALTER TABLE records ADD COLUMN seq bigint;
-- Existing rows are numbered in the order they were stored.
UPDATE records AS r SET seq = n.seq
FROM (SELECT tenant, source, id,
             row_number() OVER (ORDER BY stored_at, tenant, source, id) AS seq
      FROM records) AS n
WHERE r.tenant = n.tenant AND r.source = n.source AND r.id = n.id;
ALTER TABLE records ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX records_seq ON records (seq);
-- Tombstones are kept `[storage] tombstone_retention`, then purged: this
-- partial index holds only them, so the purge never scans live records.
CREATE INDEX records_tombstones ON records (stored_at) WHERE deleted;

-- `last_seq`: the highest seq handed out (never reused, even when its row
-- is purged). `purged_through`: the highest seq of a change that left no
-- row behind (a purged tombstone, a forgotten source); a reader whose
-- position is below it may have missed a deletion and must resync.
CREATE TABLE change_seq (
    id             integer PRIMARY KEY CHECK (id = 1),
    last_seq       bigint  NOT NULL,
    purged_through bigint  NOT NULL DEFAULT 0
);
INSERT INTO change_seq (id, last_seq, purged_through)
SELECT 1, coalesce(max(seq), 0), 0 FROM records;
