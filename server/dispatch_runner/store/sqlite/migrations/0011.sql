-- 11: cron schedules. Each fires as an ordinary dispatch; peers race for a tick with a
--     compare-and-set on next_run_at (one wins; a failed submit puts the tick back).
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    dispatch TEXT NOT NULL,           -- JSON: the dispatch arguments
    next_run_at REAL NOT NULL,
    last_run_at REAL,
    last_workspace TEXT,
    last_error TEXT,                  -- why the last submit failed (the tick was put back)
    client TEXT,
    origin TEXT,
    host TEXT,                        -- the host whose peers fire it (its cwd or repo is there); NULL: any
    created_at REAL NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at);
