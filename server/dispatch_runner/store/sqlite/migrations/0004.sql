-- 4: when the agent itself started: durations are the agent's wall time

    ALTER TABLE runs ADD COLUMN agent_started_at REAL;
    