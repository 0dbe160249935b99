-- `purge_cutoff_us`: see the SQLite migration of the same name. A deletion
-- dated before the last purge's cutoff, of a record without a row, is not
-- stored again (its tombstone may have been purged already).
ALTER TABLE change_seq ADD COLUMN purge_cutoff_us bigint NOT NULL DEFAULT 0;
