-- 7: routing and scheduling. A workspace may name a preference list of agents (`route`: JSON
--    [{agent, pool, model}], its pool/model are those of the entry it will run on) and records
--    which one it took and why (`routed`); it may wait for others (`deps`, `after_mode`) or for
--    its group's cap (`held` says why it is not claimable: its not_before is then HELD_UNTIL);
--    fair share orders a priority level by `share_rank` (the sender's round), `promoted_at`
--    marks an age promotion; `preemptible`, `sandbox` and `ask` are its policy. A pool keeps
--    its adaptive limit (AIMD) with its clean streak.
ALTER TABLE workspaces ADD COLUMN route TEXT;
ALTER TABLE workspaces ADD COLUMN routed TEXT;
ALTER TABLE workspaces ADD COLUMN group_id TEXT;
ALTER TABLE workspaces ADD COLUMN held TEXT;
ALTER TABLE workspaces ADD COLUMN after_mode TEXT;
ALTER TABLE workspaces ADD COLUMN share_key TEXT;
ALTER TABLE workspaces ADD COLUMN share_rank BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN promoted_at DOUBLE PRECISION;
ALTER TABLE workspaces ADD COLUMN preemptible BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE workspaces ADD COLUMN sandbox TEXT;
ALTER TABLE workspaces ADD COLUMN ask TEXT;
ALTER TABLE pool_state ADD COLUMN effective_limit INTEGER;
ALTER TABLE pool_state ADD COLUMN clean_streak INTEGER NOT NULL DEFAULT 0;
DROP INDEX workspaces_queue;
CREATE INDEX workspaces_queue ON workspaces (lane, priority, share_rank, created_at, seq, not_before)
    WHERE state = 'queued';
DROP INDEX workspaces_queue_pool;
CREATE INDEX workspaces_queue_pool ON workspaces (pool, priority, share_rank, created_at, seq, not_before)
    WHERE state = 'queued';
CREATE INDEX workspaces_routed ON workspaces (priority, share_rank, created_at, seq)
    WHERE state = 'queued' AND route IS NOT NULL;
CREATE INDEX workspaces_share ON workspaces (pool, priority, share_key, share_rank)
    WHERE state = 'queued';
CREATE INDEX workspaces_group ON workspaces (group_id, seq) WHERE group_id IS NOT NULL;

-- what a workspace waits for (`after`): a row per workspace it needs, gone once that one ended
CREATE TABLE deps (
    workspace TEXT NOT NULL,
    needs TEXT NOT NULL,
    PRIMARY KEY (workspace, needs)
);
CREATE INDEX deps_needs ON deps (needs);

-- fan-out groups: one dispatch of many tasks, with a cap on how many are released at once
CREATE TABLE groups (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    concurrency INTEGER,
    client TEXT,
    origin TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION
);
