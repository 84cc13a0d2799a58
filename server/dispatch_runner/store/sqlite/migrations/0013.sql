-- 13: a held workspace (waiting for others, or for its group's cap) waits at HELD_UNTIL; the
--     not_before it takes when it is released (its dispatch's not_before, 0 for none) is kept here.
ALTER TABLE workspaces ADD COLUMN release_not_before REAL;
