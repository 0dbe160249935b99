-- The instant a scheduled run was due (µs since the epoch, UTC): the
-- schedule tick it answers, before any jitter or wait for a sync slot.
-- `started_at - scheduled_at` is the run's start lateness (issue 7). NULL for
-- runs nobody scheduled: the first run at start-up, push notifications,
-- `synchro sync`.
ALTER TABLE runs ADD COLUMN scheduled_at INTEGER;
