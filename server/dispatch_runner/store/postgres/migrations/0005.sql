-- 5: the host whose disk holds a workspace's directory (where it was dispatched, or moved
--    to by the host that claimed it): a workspace without cwd or repo moves to the host that runs it
ALTER TABLE workspaces ADD COLUMN dir_host TEXT;
