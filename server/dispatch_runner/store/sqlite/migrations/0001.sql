-- 1: workspaces, runs, events, pool state, idempotency keys, peers, settings

    CREATE TABLE workspaces (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        pool TEXT NOT NULL,
        model TEXT,
        lane TEXT NOT NULL,              -- pool || char(31) || coalesce(model, ''): one gate lane
        agent TEXT NOT NULL,
        task TEXT NOT NULL,
        prompt TEXT NOT NULL,
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
        timeout_s REAL,
        not_before REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        summary TEXT,
        session_id TEXT,
        origin TEXT,
        parent TEXT,
        current_run INTEGER,
        spec TEXT NOT NULL
    );
    -- capacity-first claim: the head of one lane is one index probe
    CREATE INDEX workspaces_queue ON workspaces (lane, priority, created_at, seq)
        WHERE state = 'queued';
    CREATE INDEX workspaces_not_before ON workspaces (not_before) WHERE state = 'queued';
    CREATE INDEX workspaces_active ON workspaces (pool, model) WHERE state = 'running';
    CREATE INDEX workspaces_state ON workspaces (state, pool);
    CREATE INDEX workspaces_created ON workspaces (created_at);
    CREATE INDEX workspaces_ended ON workspaces (ended_at) WHERE ended_at IS NOT NULL;

    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workspace TEXT NOT NULL,
        pool TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        phase TEXT NOT NULL,             -- reserved | running | exited | abandoned
        claimed_by TEXT,
        claimed_at REAL NOT NULL,
        shim_pid INTEGER,
        shim_start INTEGER,
        agent_pid INTEGER,
        agent_start INTEGER,
        boot_id TEXT,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        outcome TEXT,
        kill_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_active ON runs (phase) WHERE phase IN ('reserved', 'running');
    CREATE INDEX runs_pool_ended ON runs (pool, ended_at) WHERE ended_at IS NOT NULL;
    CREATE INDEX runs_workspace ON runs (workspace);

    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        workspace TEXT,
        origin TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);

    CREATE TABLE pool_state (
        pool TEXT PRIMARY KEY,
        backoff_until REAL,
        fail_count INTEGER NOT NULL DEFAULT 0,
        last_spawn REAL,
        daily_count INTEGER NOT NULL DEFAULT 0,
        daily_day TEXT
    );

    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE peers (
        id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        start INTEGER NOT NULL,
        boot_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    