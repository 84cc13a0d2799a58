-- 2: index-only counts for queue positions and status; O(log n) lane scans

    CREATE INDEX workspaces_queue_pool ON workspaces (pool, priority, created_at, seq)
        WHERE state = 'queued';
    DROP INDEX workspaces_state;
    CREATE INDEX workspaces_state_cover ON workspaces (state, pool, model, created_at);
    