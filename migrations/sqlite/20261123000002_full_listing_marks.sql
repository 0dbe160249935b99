-- Full listings that must end with the source holding exactly what they
-- returned (Google Calendar's clear-and-resync after 410 Gone) mark every
-- record they return with the listing's generation; when the listing
-- completes, records of the source without that mark are removed in the same
-- transaction that stores the new sync token.
ALTER TABLE records ADD COLUMN listing INTEGER;
