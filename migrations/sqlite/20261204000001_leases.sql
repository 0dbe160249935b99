-- One run per source across processes (DESIGN.md §3b). A run takes its
-- source's lease before its first request and every commit of the run is
-- fenced on (run_id, epoch): a process that lost the lease (paused past
-- its expiry, then taken over) can never write again. The row outlives the
-- runs so that `epoch` only ever grows; `run_id IS NULL` means free.
CREATE TABLE leases (
    tenant      TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    run_id      TEXT,
    host        TEXT,
    -- Which kernel and pid namespace `pid` belongs to: a holder on the same
    -- node whose pid is gone can be taken over at once.
    node        TEXT,
    pid         INTEGER,
    acquired_at INTEGER,
    expires_at  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, source)
) WITHOUT ROWID;

-- Import-state reports are claimed before they are sent, so that two
-- processes never send the same one; a claim whose holder died expires.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claim_expires_at INTEGER NOT NULL DEFAULT 0;

-- One row a failing daemon rewrites (with a 1 MiB blob, emptied again
-- once it succeeds) to learn that the database takes writes again: a full
-- disk has space back when 1 MiB fits. `/readyz` stays 503 until then.
CREATE TABLE write_probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    written_at INTEGER NOT NULL,
    pad        BLOB
);
