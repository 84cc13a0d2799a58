-- 14: the dashboard reads the runs of the last hour (its timeline) and one workspace's events.
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX events_workspace ON events (workspace, id) WHERE workspace IS NOT NULL;
