-- The daemons (`synchro run`) using this database, each refreshing its row
-- while it runs: what `synchro status` shows as replicas and their
-- liveness. A row whose `seen_at` is old is a replica that died.
CREATE TABLE replicas (
    id         TEXT    NOT NULL PRIMARY KEY,
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
) WITHOUT ROWID;
