-- When each source is next due, shared by the replicas: each claims due
-- sources in batches (`FOR UPDATE SKIP LOCKED`), runs them, and moves
-- `due_at` to the source's next tick. A claim lapses at `claimed_until`
-- (database clock) so that a replica that died leaves its claims to the
-- others. The rows are scheduling state, not data: `copy-store` does not
-- copy them, and a replica recreates them from its config.
CREATE TABLE schedule (
    tenant        text COLLATE "C" NOT NULL,
    source        text COLLATE "C" NOT NULL,
    -- The schedule as configured: a change makes the source due at once.
    schedule      text   NOT NULL,
    -- µs since the epoch.
    due_at        bigint NOT NULL,
    claimed_by    text,
    claimed_until bigint,
    PRIMARY KEY (tenant, source)
);

-- The claim query walks due sources oldest first.
CREATE INDEX schedule_due ON schedule (due_at);
