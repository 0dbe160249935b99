-- Every run start closes the runs of its source that a killed process left
-- 'running'. Through runs_by_source that walked the source's whole run
-- history (a source on "every 1m" adds 525,600 runs a year); this partial
-- index holds only the open runs, so the lookup stays O(1) as history grows.
CREATE INDEX runs_running ON runs (tenant, source) WHERE outcome = 'running';
