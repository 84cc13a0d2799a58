-- 7: the fleet. A run's lease, renewed by its shim: a run of another host whose lease expired
--    without an exit is lost (judged by any peer, recorded once). What a workspace requires of
--    the host that runs it (a JSON list of labels). What each peer's host advertises: the pools
--    it can run and its labels (JSON lists), and the HTTP endpoint it serves, if any.
ALTER TABLE runs ADD COLUMN lease_until REAL;
ALTER TABLE workspaces ADD COLUMN requires TEXT;
ALTER TABLE peers ADD COLUMN host TEXT;
ALTER TABLE peers ADD COLUMN agents TEXT;
ALTER TABLE peers ADD COLUMN labels TEXT;
ALTER TABLE peers ADD COLUMN url TEXT;
