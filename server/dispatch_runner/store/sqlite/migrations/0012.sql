-- 12: approvals. A sub-agent's permission request waits here for an answer (approve) or its
--     deadline (denied then).
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    run INTEGER,
    tool TEXT NOT NULL,
    input TEXT NOT NULL,              -- JSON: what the agent asked to do
    tool_use_id TEXT,                 -- the agent's id of the tool call
    created_at REAL NOT NULL,
    deadline REAL NOT NULL,
    decision TEXT,                    -- allow | deny
    note TEXT,
    answered_at REAL,
    answered_by TEXT
);
CREATE INDEX approvals_pending ON approvals (created_at) WHERE decision IS NULL;
CREATE INDEX approvals_workspace ON approvals (workspace);
