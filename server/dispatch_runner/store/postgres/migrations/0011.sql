-- 11: the dashboard reads the runs of the last hour (its timeline) and one workspace's events;
--     a run's progress (last line, tokens, dollars), sent by its shim with each lease renewal,
--     so a dashboard on any host shows it.
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX events_workspace ON events (workspace, id) WHERE workspace IS NOT NULL;
ALTER TABLE runs ADD COLUMN live TEXT;
