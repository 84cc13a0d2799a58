-- 3: the host a workspace's directory is on (where it was dispatched): only that host's peers
--    claim it, since another host has neither its directory nor its worktree
ALTER TABLE workspaces ADD COLUMN host TEXT;
