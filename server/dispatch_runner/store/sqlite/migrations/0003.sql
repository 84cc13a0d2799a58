-- 3: the task is stored once (the prompt lives in prompt.md, the spec refers to it);
--    ended_reason; a revision per workspace (status.json never goes back); base commit of a
--    worktree (gc keeps a branch with commits beyond it); the pool state a claim changed, so
--    a claim that never started gives its pacing mark and daily slot back; the schema a peer
--    knows (an older peer's claims cannot start: they go back to the queue)

    ALTER TABLE workspaces DROP COLUMN prompt;
    ALTER TABLE workspaces ADD COLUMN ended_reason TEXT;
    ALTER TABLE workspaces ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workspaces ADD COLUMN base_commit TEXT;
    ALTER TABLE runs ADD COLUMN spawn_mark REAL;
    ALTER TABLE runs ADD COLUMN prev_last_spawn REAL;
    ALTER TABLE runs ADD COLUMN counted_day TEXT;
    ALTER TABLE peers ADD COLUMN schema INTEGER;  -- NULL: a peer from before this step
    