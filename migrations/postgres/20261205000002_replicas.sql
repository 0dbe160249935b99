-- The daemons (`synchro run`) using this database, each refreshing its row
-- while it runs: what `synchro status` shows as replicas and their
-- liveness, judged on the database clock. A row whose `seen_at` is old is
-- a replica that died.
CREATE TABLE replicas (
    id         text   PRIMARY KEY,
    host       text   NOT NULL,
    pid        bigint NOT NULL,
    started_at bigint NOT NULL,
    seen_at    bigint NOT NULL
);
