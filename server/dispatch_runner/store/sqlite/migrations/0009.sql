-- 9: report-back. What each run said it cost (turns, tokens, dollars; summed on its workspace),
--    what a run in a git worktree or repository changed (a JSON diff stat and commit list),
--    when a run went quiet (stalled), where a workspace sits in a tree of sub-agents (depth and
--    its root, so a root's descendants are one index count), the client a workspace's
--    completion is owed to, and the input of its next run (a follow-up that resumes its session).
ALTER TABLE runs ADD COLUMN turns INTEGER;
ALTER TABLE runs ADD COLUMN input_tokens INTEGER;
ALTER TABLE runs ADD COLUMN output_tokens INTEGER;
ALTER TABLE runs ADD COLUMN cost_usd REAL;
ALTER TABLE runs ADD COLUMN resumed TEXT;
ALTER TABLE workspaces ADD COLUMN turns INTEGER;
ALTER TABLE workspaces ADD COLUMN input_tokens INTEGER;
ALTER TABLE workspaces ADD COLUMN output_tokens INTEGER;
ALTER TABLE workspaces ADD COLUMN cost_usd REAL;
ALTER TABLE workspaces ADD COLUMN diff TEXT;
ALTER TABLE workspaces ADD COLUMN commits TEXT;
ALTER TABLE workspaces ADD COLUMN stalled_at REAL;
ALTER TABLE workspaces ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
ALTER TABLE workspaces ADD COLUMN root TEXT;
ALTER TABLE workspaces ADD COLUMN client TEXT;
ALTER TABLE workspaces ADD COLUMN next_input TEXT;
CREATE INDEX workspaces_parent ON workspaces (parent) WHERE parent IS NOT NULL;
CREATE INDEX workspaces_root ON workspaces (root) WHERE root IS NOT NULL;

-- messages to a workspace: taken live by a running agent that reads input, or joined into the
-- input of its next (resume) run
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    delivered_how TEXT,               -- live | run
    run INTEGER
);
CREATE INDEX messages_pending ON messages (workspace, id) WHERE delivered_at IS NULL;

-- spend per pool and per agent per reset-to-reset day (allowance)
CREATE TABLE spend (
    key TEXT NOT NULL,                -- a pool, or an agent (pool:model)
    day TEXT NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key, day)
);

-- completions owed to clients: written with the exit, delivered once
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    workspace TEXT NOT NULL,
    event INTEGER NOT NULL,           -- the events row of the completion
    created_at REAL NOT NULL,
    delivered_at REAL,
    delivered_to TEXT
);
CREATE INDEX outbox_pending ON outbox (client, id) WHERE delivered_at IS NULL;
CREATE INDEX outbox_workspace ON outbox (workspace);
