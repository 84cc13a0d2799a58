-- 1: workspaces, runs, events, pool state, settings, peers (the SQLite schema as of its step 4)
CREATE TABLE workspaces (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    model TEXT,
    lane TEXT NOT NULL,              -- pool || chr(31) || coalesce(model, ''): one gate lane
    agent TEXT NOT NULL,
    task TEXT NOT NULL,
    template TEXT NOT NULL,
    priority INTEGER NOT NULL,
    label TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    path TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    cwd TEXT,
    repo TEXT,
    branch TEXT,
    idempotency_key TEXT UNIQUE,
    runs INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    timeout_s DOUBLE PRECISION,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    exit_code INTEGER,
    summary TEXT,
    session_id TEXT,
    origin TEXT,
    parent TEXT,
    current_run BIGINT,
    spec TEXT NOT NULL,
    ended_reason TEXT,
    rev INTEGER NOT NULL DEFAULT 0,
    base_commit TEXT
);
-- capacity-first claim: the head of one lane is one index probe
CREATE INDEX workspaces_queue ON workspaces (lane, priority, created_at, seq) WHERE state = 'queued';
CREATE INDEX workspaces_queue_pool ON workspaces (pool, priority, created_at, seq) WHERE state = 'queued';
CREATE INDEX workspaces_not_before ON workspaces (not_before) WHERE state = 'queued';
CREATE INDEX workspaces_active ON workspaces (pool, model) WHERE state = 'running';
CREATE INDEX workspaces_state_cover ON workspaces (state, pool, model, created_at);
CREATE INDEX workspaces_created ON workspaces (created_at);
CREATE INDEX workspaces_ended ON workspaces (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    workspace TEXT NOT NULL,
    pool TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    phase TEXT NOT NULL,             -- reserved | running | exited | abandoned
    claimed_by TEXT,
    claimed_at DOUBLE PRECISION NOT NULL,
    shim_pid BIGINT,
    shim_start BIGINT,
    agent_pid BIGINT,
    agent_start BIGINT,
    boot_id TEXT,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    exit_code INTEGER,
    outcome TEXT,
    kill_requested INTEGER NOT NULL DEFAULT 0,
    spawn_mark DOUBLE PRECISION,
    prev_last_spawn DOUBLE PRECISION,
    counted_day TEXT,
    agent_started_at DOUBLE PRECISION
);
CREATE INDEX runs_active ON runs (phase) WHERE phase IN ('reserved', 'running');
CREATE INDEX runs_pool_ended ON runs (pool, ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX runs_workspace ON runs (workspace);

-- ids follow commit order: every insert holds the events advisory lock until its commit
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    type TEXT NOT NULL,
    workspace TEXT,
    origin TEXT,
    data TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);

CREATE TABLE pool_state (
    pool TEXT PRIMARY KEY,
    backoff_until DOUBLE PRECISION,
    fail_count INTEGER NOT NULL DEFAULT 0,
    last_spawn DOUBLE PRECISION,
    daily_count INTEGER NOT NULL DEFAULT 0,
    daily_day TEXT
);

CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE peers (
    id TEXT PRIMARY KEY,
    pid BIGINT NOT NULL,
    start BIGINT NOT NULL,
    boot_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    schema INTEGER
);
