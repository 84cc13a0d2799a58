-- 2: the host a run belongs to (its claiming peer's): a run is judged only on its own host
ALTER TABLE runs ADD COLUMN host TEXT;
