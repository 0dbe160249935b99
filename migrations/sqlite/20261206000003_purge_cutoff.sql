-- `purge_cutoff_us`: the `stored_at` before which the last tombstone purge
-- removed tombstones. An upstream can report a deletion again after its
-- tombstone went (Démarches Simplifiées lists deletions with a look-back of
-- weeks): a deletion dated before this instant, of a record the store
-- holds no row for, is one a reader has either seen already or will be
-- told to resync over, so it is not stored again as a new change.
ALTER TABLE change_seq ADD COLUMN purge_cutoff_us INTEGER NOT NULL DEFAULT 0;
