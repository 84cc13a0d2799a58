-- The SQLite backend's named queries. Each block starts with `-- name: <name>`; the backend runs
-- them as `Q.<name>`. `{marker}`s are filled by `Q.expand` (an IN list, an optional filter).
-- The `INDEXED BY` hints keep the hot paths on their index whatever the planner guesses.

-- ---- connection and transactions -------------------------------------------------------------

-- name: journal_wal
PRAGMA journal_mode = WAL;

-- name: busy_timeout
PRAGMA busy_timeout = {ms};

-- name: synchronous_normal
PRAGMA synchronous = NORMAL;

-- name: foreign_keys_on
PRAGMA foreign_keys = ON;

-- name: query_only
PRAGMA query_only = ON;

-- name: data_version
PRAGMA data_version;

-- name: begin
-- SQLite has no SKIP LOCKED: BEGIN IMMEDIATE takes the write lock first, so claims serialise
BEGIN IMMEDIATE;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- name: schema_version
PRAGMA user_version;

-- name: set_schema_version
PRAGMA user_version = {version};

-- ---- events ----------------------------------------------------------------------------------

-- name: insert_event
INSERT INTO events (at, type, workspace, origin, data) VALUES (?,?,?,?,?) RETURNING id;

-- name: events_after
SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?;

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM events;

-- ---- workspaces ------------------------------------------------------------------------------

-- name: workspace
SELECT * FROM workspaces WHERE id = ?;

-- name: workspace_by_idempotency_key
SELECT * FROM workspaces WHERE idempotency_key = ?;

-- name: workspaces_by_ids
SELECT * FROM workspaces WHERE id IN ({ids});

-- name: insert_workspace
INSERT INTO workspaces (id, pool, model, lane, agent, task, template,
   priority, label, state, path, run_dir, cwd, repo, branch, base_commit,
   idempotency_key, max_attempts, timeout_s, not_before, created_at, updated_at,
   origin, parent, spec, rev, host, requires, dir_host, depth, root, client,
   route, group_id, held, after_mode, share_key, share_rank, preemptible, sandbox, ask)
   VALUES (?,?,?,?,?,?,?,?,?,'queued',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?);

-- name: server_time
SELECT (julianday('now') - 2440587.5) * 86400.0;

-- name: has_work
SELECT EXISTS (SELECT 1 FROM workspaces WHERE state IN ('queued', 'running'));

-- name: queue_position
-- the 1-based place of a queued workspace in its pool's queue (held work is behind it): an
-- index-only count
SELECT count(*) FROM workspaces INDEXED BY workspaces_queue_pool
   WHERE state = 'queued' AND pool = ? AND not_before < 253402300799 AND
   (priority, share_rank, created_at, seq) <= (?, ?, ?, ?);

-- ---- what an ETA counts (lifecycle.plan_eta asks for the ones it needs) -----------------------

-- name: running_in_pool
SELECT count(*) FROM workspaces WHERE state = 'running' AND pool = ?;

-- name: running_in_lane
SELECT count(*) FROM workspaces WHERE state = 'running' AND pool = ? AND model = ?;

-- name: queued_ahead_in_pool
SELECT count(*) FROM workspaces INDEXED BY workspaces_queue_pool
   WHERE state = 'queued' AND pool = ? AND priority <= ? AND not_before <= ?;

-- name: queued_ahead_in_lane
SELECT count(*) FROM workspaces INDEXED BY workspaces_queue
   WHERE state = 'queued' AND lane = ? AND priority <= ? AND not_before <= ?;

-- name: recent_runtimes
-- the agent's own wall time when it is known, else the run's
SELECT ended_at - coalesce(agent_started_at, started_at) FROM runs WHERE pool = ?
   AND ended_at IS NOT NULL AND started_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?;

-- ---- claims ----------------------------------------------------------------------------------

-- name: running_by_lane
-- running (and reserved) runs per pool and model
SELECT pool, model, count(*) n FROM workspaces WHERE state = 'running' GROUP BY pool, model;

-- name: queued_lanes
-- the distinct lanes with queued work: a loose index scan, O(lanes * log n)
WITH RECURSIVE l(lane) AS (
     SELECT min(lane) FROM workspaces INDEXED BY workspaces_queue WHERE state = 'queued'
     UNION ALL
     SELECT (SELECT min(lane) FROM workspaces INDEXED BY workspaces_queue
             WHERE state = 'queued' AND lane > l.lane)
     FROM l WHERE l.lane IS NOT NULL)
   SELECT lane FROM l WHERE lane IS NOT NULL;

-- name: lane_head
-- a page of the head of one lane that this host may run: a probe of workspaces_queue, on from
-- the last (priority, created_at, seq) the claimer saw (workspaces of other hosts are stepped
-- over; the claimer checks each one's requires against its labels)
SELECT * FROM workspaces INDEXED BY workspaces_queue
   WHERE state = 'queued' AND lane = ? AND not_before <= ?
   AND (host IS NULL OR host = ?) AND (priority, share_rank, created_at, seq) > (?, ?, ?, ?)
   ORDER BY priority, share_rank, created_at, seq LIMIT ?;

-- name: lane_head_plain
-- the head of one lane for a host without labels: only workspaces that require none fit
SELECT * FROM workspaces INDEXED BY workspaces_queue
   WHERE state = 'queued' AND lane = ? AND not_before <= ?
   AND (host IS NULL OR host = ?) AND requires IS NULL
   ORDER BY priority, share_rank, created_at, seq LIMIT 1;

-- name: lane_head_pinned
-- a page of the same, of a pool this host has no agent for: only workspaces pinned to this host
SELECT * FROM workspaces INDEXED BY workspaces_queue
   WHERE state = 'queued' AND lane = ? AND not_before <= ?
   AND host = ? AND (priority, share_rank, created_at, seq) > (?, ?, ?, ?)
   ORDER BY priority, share_rank, created_at, seq LIMIT ?;

-- name: next_not_before
SELECT min(not_before) FROM workspaces INDEXED BY workspaces_not_before
   WHERE state = 'queued' AND not_before > ? AND not_before < 253402300799;

-- name: reserve_run
INSERT INTO runs (workspace, pool, attempt, phase, claimed_by, claimed_at, spawn_mark,
   prev_last_spawn, counted_day, host) VALUES (?,?,?,'reserved',?,?,?,?,?,?) RETURNING id;

-- name: claim_workspace
UPDATE workspaces SET state = 'running', runs = runs + 1, current_run = ?,
   started_at = NULL, ended_at = NULL, exit_code = NULL, ended_reason = NULL,
   updated_at = ?, rev = rev + 1 WHERE id = ? AND state = 'queued';

-- ---- pool state ------------------------------------------------------------------------------

-- name: pool_state
SELECT * FROM pool_state WHERE pool = ?;

-- name: save_pool_state
INSERT INTO pool_state (pool, backoff_until, fail_count, last_spawn, daily_count,
   daily_day, effective_limit, clean_streak) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (pool) DO UPDATE SET
   backoff_until = excluded.backoff_until, fail_count = excluded.fail_count,
   last_spawn = excluded.last_spawn, daily_count = excluded.daily_count,
   daily_day = excluded.daily_day,
   effective_limit = excluded.effective_limit, clean_streak = excluded.clean_streak;

-- ---- runs ------------------------------------------------------------------------------------

-- name: run
SELECT * FROM runs WHERE id = ?;

-- name: workspace_runs
SELECT * FROM runs WHERE workspace = ? ORDER BY id;

-- name: active_runs
SELECT * FROM runs WHERE phase IN ('reserved', 'running') ORDER BY id;

-- name: start_run
-- compare-and-set reserved -> running
UPDATE runs SET phase = 'running', shim_pid = ?, shim_start = ?, boot_id = ?,
   started_at = ?, lease_until = ? WHERE id = ? AND phase = 'reserved' AND kill_requested = 0;

-- name: started_run
SELECT r.attempt, w.id, w.agent, w.origin FROM runs r JOIN workspaces w
   ON w.id = r.workspace WHERE r.id = ?;

-- name: record_agent
UPDATE runs SET agent_pid = ?, agent_start = ?, agent_started_at = ?
   WHERE id = ? AND phase = 'running';

-- name: agent_started
UPDATE workspaces SET started_at = ? WHERE current_run = ?;

-- name: kill_requested
SELECT kill_requested FROM runs WHERE id = ?;

-- name: relocate_workspace
-- a workspace that may run on any host, moved to its claiming host's workspace root
UPDATE workspaces SET path = ?, run_dir = ?, dir_host = ?, rev = rev + 1 WHERE id = ?;

-- name: renew_lease
-- the shim's heartbeat, with its run's progress so far (JSON; null: unchanged): only while its
-- run is still running (a run already taken for lost stays lost)
UPDATE runs SET lease_until = ?, live = coalesce(?, live) WHERE id = ? AND phase = 'running';

-- name: requeues
SELECT count(*) FROM runs WHERE workspace = ? AND outcome = ?;

-- name: end_run
UPDATE runs SET phase = 'exited', ended_at = ?, exit_code = ?, outcome = ?,
   turns = ?, input_tokens = ?, output_tokens = ?, cost_usd = ?
   WHERE id = ? AND phase IN ('reserved', 'running');

-- name: run_ended
-- the workspace after its run's end, as lifecycle.plan_exit planned it
UPDATE workspaces SET state = ?, reason = ?, attempts = ?, not_before = ?,
   exit_code = ?, summary = coalesce(?, summary), session_id = coalesce(?, session_id),
   ended_at = ?, updated_at = ?, current_run = CASE WHEN ? THEN current_run END,
   ended_reason = ?, turns = ?, input_tokens = ?, output_tokens = ?, cost_usd = ?,
   diff = coalesce(?, diff), commits = coalesce(?, commits), stalled_at = NULL,
   next_input = CASE WHEN ? THEN NULL ELSE next_input END,
   rev = rev + 1
   WHERE id = ?;

-- name: abandon_reservation
UPDATE runs SET phase = 'abandoned', ended_at = ? WHERE id = ? AND phase = 'reserved';

-- name: requeue_workspace
UPDATE workspaces SET state = 'queued', runs = runs - 1, current_run = NULL,
   started_at = NULL, updated_at = ?, rev = rev + 1
   WHERE id = ? AND state = 'running';

-- ---- control ---------------------------------------------------------------------------------

-- name: frozen
SELECT value FROM settings WHERE key = 'frozen';

-- name: set_frozen
INSERT INTO settings (key, value) VALUES ('frozen', ?)
   ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: kill_targets_all
SELECT * FROM workspaces WHERE state IN ('queued', 'running');

-- name: kill_targets_of_agent
-- an agent by its name, or a pool's every model when named by its base alone
SELECT * FROM workspaces WHERE state IN ('queued', 'running')
   AND (agent = ? OR (pool = ? AND ? NOT LIKE '%:%'));

-- name: kill_targets_by_ids
SELECT * FROM workspaces WHERE state IN ('queued', 'running') AND id IN ({ids});

-- name: cancel_workspace
UPDATE workspaces SET state = 'cancelled', reason = 'cancelled on request',
   ended_reason = 'cancelled', ended_at = ?, updated_at = ?, rev = rev + 1
   WHERE id = ? AND state = 'queued';

-- name: request_kill
UPDATE runs SET kill_requested = 1 WHERE id = ?;

-- ---- status snapshot (index-backed: workspaces_state_cover, runs_pool_ended, workspaces_created)

-- name: count_by_state
SELECT state, count(*) FROM workspaces GROUP BY state;

-- name: pool_counts
SELECT pool, model, state, count(*) n, min(created_at) oldest FROM
   workspaces WHERE state IN ('queued', 'running') GROUP BY pool, model, state;

-- name: known_pools
SELECT pool FROM pool_state;

-- name: finished_since
-- runs finished per pool since a time (throughput)
SELECT pool, count(*) FROM runs WHERE ended_at >= ? AND ended_at IS NOT NULL GROUP BY pool;

-- name: recent_running
-- {filters}: none, or the filter_* blocks below, each starting with AND
SELECT *, (SELECT host FROM runs WHERE id = current_run) AS run_host FROM workspaces WHERE state = 'running' {filters}
   ORDER BY created_at DESC LIMIT ?;

-- name: recent_not_running
SELECT *, (SELECT host FROM runs WHERE id = current_run) AS run_host FROM workspaces WHERE state != 'running' {filters}
   ORDER BY created_at DESC LIMIT ?;

-- name: filter_agent
AND (agent = ? OR pool = ?);

-- name: filter_state
AND state = ?;

-- ---- peers and housekeeping ------------------------------------------------------------------

-- name: heartbeat_peer
INSERT INTO peers (id, pid, start, boot_id, kind, heartbeat_at, schema, host, agents, labels, url)
   VALUES (?,?,?,?,?,?,?,?,?,?,?)
   ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
   schema = excluded.schema, host = excluded.host, agents = excluded.agents,
   labels = excluded.labels, url = excluded.url;

-- name: peers
SELECT * FROM peers ORDER BY heartbeat_at DESC;

-- name: remove_peers
DELETE FROM peers WHERE id IN ({ids});

-- name: finished_before
-- a page of finished workspaces that ended before a time, past an (ended_at, id) cursor
SELECT * FROM workspaces WHERE ended_at IS NOT NULL AND ended_at < ? AND state NOT IN
   ('queued', 'running') AND (ended_at > ? OR (ended_at = ? AND id > ?))
   ORDER BY ended_at, id LIMIT ?;

-- name: forget_runs
DELETE FROM runs WHERE workspace IN ({ids});

-- name: forget_outbox
DELETE FROM outbox WHERE workspace IN ({ids});

-- name: forget_messages
DELETE FROM messages WHERE workspace IN ({ids});

-- name: forget_workspaces
DELETE FROM workspaces WHERE id IN ({ids}) AND state NOT IN ('queued', 'running');

-- name: forget_events
DELETE FROM events WHERE at < ?;

-- ---- report-back: spend, stalls, trees of sub-agents, follow-ups, the outbox -----------------

-- name: add_spend
INSERT INTO spend (key, day, runs, tokens, usd) VALUES (?, ?, ?, ?, ?)
   ON CONFLICT (key, day) DO UPDATE SET runs = spend.runs + excluded.runs,
   tokens = spend.tokens + excluded.tokens, usd = spend.usd + excluded.usd;

-- name: mark_allowance_exhausted
-- once per key and day: the first claim that finds an allowance used up says so (event)
INSERT INTO settings (key, value) VALUES (?, ?)
   ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE settings.value <> excluded.value;

-- name: spend_of
SELECT key, runs, tokens, usd FROM spend WHERE day = ? AND key IN ({keys});

-- name: set_stalled
-- the running workspace of a run went quiet (since a time), or spoke again (NULL)
UPDATE workspaces SET stalled_at = ?, rev = rev + 1
   WHERE current_run = ? AND state = 'running' AND stalled_at IS NOT ?;

-- name: children
SELECT id, agent, state FROM workspaces WHERE parent = ? ORDER BY seq LIMIT 100;

-- name: descendants
SELECT count(*) FROM workspaces WHERE root = ?;

-- name: tree_ids
-- a workspace's descendants, one level at a time ({ids}: the level above)
SELECT id FROM workspaces WHERE parent IN ({ids});

-- name: insert_message
INSERT INTO messages (workspace, text, created_at) VALUES (?, ?, ?) RETURNING id;

-- name: workspace_for_update
-- (SQLite: its write lock already serialises this with every exit)
SELECT * FROM workspaces WHERE id = ?;

-- name: message_state
SELECT delivered_at, delivered_how FROM messages WHERE id = ?;

-- name: pending_messages
SELECT id, text FROM messages WHERE workspace = ? AND delivered_at IS NULL ORDER BY id;

-- name: deliver_message
UPDATE messages SET delivered_at = ?, delivered_how = ?, run = ?
   WHERE id = ? AND delivered_at IS NULL;

-- name: reopen_workspace
-- a finished workspace takes a follow-up: queued again, to resume its agent's session
UPDATE workspaces SET state = 'queued', next_input = ?, attempts = 0, not_before = ?,
   ended_at = NULL, exit_code = NULL, reason = NULL, ended_reason = NULL, priority = ?,
   updated_at = ?, rev = rev + 1
   WHERE id = ? AND state IN ('completed', 'failed', 'killed', 'lost');

-- name: insert_outbox
INSERT INTO outbox (client, workspace, event, created_at) VALUES (?, ?, ?, ?);

-- name: outbox_pending
-- completions owed to a client that no session has received, after a cursor (an outbox id)
SELECT o.id, o.client, o.event, o.workspace, e.type, e.at, e.origin, e.data FROM outbox o
   JOIN events e ON e.id = o.event
   WHERE o.client = ? AND o.delivered_at IS NULL AND o.id > ? ORDER BY o.id LIMIT ?;

-- name: outbox_deliver
-- compare-and-set: the one session that takes a completion sends it
UPDATE outbox SET delivered_at = ?, delivered_to = ?
   WHERE workspace = ? AND event = ? AND client = ? AND delivered_at IS NULL;

-- name: outbox_release
-- a send that failed: the completion is owed again
UPDATE outbox SET delivered_at = NULL, delivered_to = NULL
   WHERE workspace = ? AND event = ? AND delivered_to = ? AND delivered_at IS NOT NULL;

-- name: outbox_undelivered
SELECT count(*) FROM outbox WHERE delivered_at IS NULL;

-- name: outbox_undelivered_of
SELECT o.id, o.client, o.event, o.workspace, e.type, e.at, e.origin, e.data FROM outbox o
   JOIN events e ON e.id = o.event
   WHERE o.delivered_at IS NULL AND o.workspace IN ({ids}) ORDER BY o.id;

-- ---- approvals: sub-agents' permission requests (store/sql/approvals.py) ----------------------

-- name: insert_approval
INSERT INTO approvals (id, workspace, run, tool, input, tool_use_id, created_at, deadline)
   VALUES (?,?,?,?,?,?,?,?);

-- name: approval
SELECT a.*, w.agent, w.origin FROM approvals a LEFT JOIN workspaces w ON w.id = a.workspace
   WHERE a.id = ?;

-- name: answer_approval
-- compare-and-set: the first answer wins, and a person's only before the deadline
UPDATE approvals SET decision = ?, note = ?, answered_at = ?, answered_by = ?
   WHERE id = ? AND decision IS NULL AND deadline > ?;

-- name: approvals_pending
-- what is still waiting: a request of a run that has ended waits for nothing
SELECT a.*, w.agent, w.origin FROM approvals a JOIN workspaces w ON w.id = a.workspace
   WHERE a.decision IS NULL AND a.deadline > ? AND w.state = 'running'
   ORDER BY a.created_at, a.id LIMIT ?;

-- name: forget_approvals
DELETE FROM approvals WHERE workspace IN ({ids});

-- ---- routing, fair share, promotion, preemption ----------------------------------------------

-- name: routed_heads
-- the first queued workspaces with a preference list (workspaces_routed: empty unless used)
SELECT * FROM workspaces INDEXED BY workspaces_routed 
   WHERE state = 'queued' AND route IS NOT NULL AND not_before <= ? AND (host IS NULL OR host = ?)
   ORDER BY priority, share_rank, created_at, seq LIMIT ?;

-- name: route_take
-- a routed claim moves the workspace to the entry it takes, and says why
UPDATE workspaces SET pool = ?, model = ?, lane = ?, agent = ?, spec = ?, routed = ?
   WHERE id = ? AND state = 'queued';

-- name: share_floor
-- fair share: the round a priority level of a pool has reached (the lowest round queued or
-- running there: a long run keeps it back, so a new sender's task goes next)
SELECT min(share_rank) FROM workspaces WHERE state = 'queued' AND pool = ? AND priority = ?
UNION ALL
SELECT min(share_rank) FROM workspaces WHERE state = 'running' AND pool = ? AND priority = ?;

-- name: share_last
-- … and the last round a sender holds in it, queued or running
SELECT max(share_rank) FROM workspaces
   WHERE state = 'queued' AND pool = ? AND priority = ? AND share_key = ?
UNION ALL
SELECT max(share_rank) FROM workspaces
   WHERE state = 'running' AND pool = ? AND priority = ? AND share_key = ?;

-- name: promote_queued
-- work queued longer than promote_after_s moves one level up (never into critical), to the front
UPDATE workspaces SET priority = priority - 1, share_rank = 0, promoted_at = ?, rev = rev + 1
   WHERE state = 'queued' AND priority > 1 AND coalesce(promoted_at, created_at) <= ?
   AND not_before < 253402300799
   RETURNING id, priority, origin;

-- name: critical_head
SELECT id FROM workspaces
   WHERE state = 'queued' AND lane = ? AND priority = 0 AND not_before <= ? LIMIT 1;

-- name: preempting_in_pool
SELECT count(*) FROM runs WHERE pool = ? AND phase IN ('reserved', 'running') AND kill_requested = 2;

-- name: preempt_victim
-- the lowest-priority preemptible run of the pool (or of the lane, when its model's limit binds)
-- that has run long enough; the youngest of those (the least work lost)
SELECT r.* FROM workspaces w JOIN runs r ON r.id = w.current_run
   WHERE w.state = 'running' AND w.pool = ? AND (w.lane = ? OR ?) AND w.priority > 0
   AND w.preemptible AND r.phase = 'running' AND r.kill_requested = 0 AND r.started_at <= ?
   ORDER BY w.priority DESC, r.started_at DESC LIMIT 1;

-- name: request_preempt
UPDATE runs SET kill_requested = 2 WHERE id = ? AND kill_requested = 0;

-- name: set_next_input
UPDATE workspaces SET next_input = ? WHERE id = ?;

-- ---- dependencies and fan-out groups (store/sql/deps.py, groups.py) -------------------------

-- name: insert_dep
INSERT INTO deps (workspace, needs) VALUES (?, ?);

-- name: dependents
-- the workspaces that wait for one that just ended
SELECT w.* FROM deps d JOIN workspaces w ON w.id = d.workspace WHERE d.needs = ? ORDER BY w.seq;

-- name: drop_dep
DELETE FROM deps WHERE workspace = ? AND needs = ?;

-- name: drop_deps_of
DELETE FROM deps WHERE workspace = ?;

-- name: deps_left
SELECT count(*) FROM deps WHERE workspace = ?;

-- name: waiting_for
SELECT needs FROM deps WHERE workspace = ? ORDER BY needs;

-- name: set_release_not_before
UPDATE workspaces SET release_not_before = ? WHERE id = ?;

-- name: release_held
-- a held workspace becomes claimable: at its own not_before, or at once
UPDATE workspaces SET held = NULL, not_before = coalesce(release_not_before, 0), updated_at = ?,
   rev = rev + 1 WHERE id = ? AND state = 'queued' AND held IS NOT NULL;

-- name: hold_for_group
UPDATE workspaces SET held = 'group', updated_at = ?, rev = rev + 1
   WHERE id = ? AND state = 'queued' AND held IS NOT NULL;

-- name: cancel_dependent
-- a workspace whose need ended otherwise than completed (after_mode success)
UPDATE workspaces SET state = 'cancelled', reason = ?, held = NULL, ended_reason = 'after',
   ended_at = ?, updated_at = ?, rev = rev + 1 WHERE id = ? AND state = 'queued';

-- name: insert_group
INSERT INTO groups (id, size, concurrency, client, origin, created_at) VALUES (?, ?, ?, ?, ?, ?);

-- name: group
SELECT * FROM groups WHERE id = ?;

-- name: group_members
SELECT * FROM workspaces WHERE group_id = ? ORDER BY seq;

-- name: group_active
-- members released and not ended: what the group's cap counts
SELECT count(*) FROM workspaces
   WHERE group_id = ? AND state IN ('queued', 'running') AND held IS NULL;

-- name: group_unfinished
SELECT count(*) FROM workspaces WHERE group_id = ? AND state IN ('queued', 'running');

-- name: group_next_held
SELECT id FROM workspaces WHERE group_id = ? AND state = 'queued' AND held = 'group'
   ORDER BY seq LIMIT 1;

-- name: end_group
UPDATE groups SET ended_at = ? WHERE id = ? AND ended_at IS NULL;

-- ---- cron schedules ---------------------------------------------------------------------------

-- name: schedules_count
SELECT count(*) FROM schedules;

-- name: insert_schedule
INSERT INTO schedules (id, cron, timezone, dispatch, next_run_at, last_run_at, last_workspace,
   last_error, client, origin, host, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?);

-- name: schedules_all
SELECT * FROM schedules ORDER BY created_at, id LIMIT ?;

-- name: schedule_by_id
SELECT * FROM schedules WHERE id = ?;

-- name: delete_schedule
DELETE FROM schedules WHERE id = ?;

-- name: schedules_due
-- the due schedules this host's peers may fire (one pinned to another host waits for that host)
SELECT * FROM schedules WHERE next_run_at <= ? AND (host IS NULL OR host = ?)
   ORDER BY next_run_at, id LIMIT ?;

-- name: schedule_next_at
SELECT min(next_run_at) FROM schedules WHERE host IS NULL OR host = ?;

-- name: schedule_take_tick
-- compare-and-set: the one peer that moves next_run_at on from the tick it read fires the tick
UPDATE schedules SET next_run_at = ?, last_run_at = ? WHERE id = ? AND next_run_at = ?;

-- name: schedule_put_back
-- a submit that failed: the tick is due again (unless the schedule changed meanwhile)
UPDATE schedules SET next_run_at = ?, last_run_at = ?, last_error = ? WHERE id = ? AND next_run_at = ?;

-- name: schedule_fired
UPDATE schedules SET last_workspace = ?, last_error = NULL WHERE id = ?;

-- name: forget_groups_outbox
-- a fan-out group's owed completion goes with the group, once gc has taken its last member
DELETE FROM outbox WHERE workspace IN (SELECT g.id FROM groups g WHERE g.ended_at IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.group_id = g.id));

-- name: forget_groups
DELETE FROM groups WHERE ended_at IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.group_id = groups.id);

-- ---- metrics (GET /metrics) --------------------------------------------------------------------

-- name: metric_workspaces
-- workspaces per pool and state (an index scan of workspaces_state_cover)
SELECT pool, state, count(*) n FROM workspaces GROUP BY pool, state;

-- name: metric_runs
-- ended runs per pool and outcome, with what they reported spending (every run the store keeps:
-- gc trims them after retention_days)
SELECT pool, outcome, count(*) n, coalesce(sum(input_tokens), 0) input_tokens,
   coalesce(sum(output_tokens), 0) output_tokens, coalesce(sum(cost_usd), 0) cost_usd
   FROM runs WHERE outcome IS NOT NULL GROUP BY pool, outcome;

-- ---- the dashboard (GET /dashboard/api/board, the workspace page) ----------------------------------

-- name: board_queued_pools
-- the pools with queued work: a loose index scan, O(pools * log n)
WITH RECURSIVE p(pool) AS (
     SELECT min(pool) FROM workspaces INDEXED BY workspaces_queue_pool WHERE state = 'queued'
     UNION ALL
     SELECT (SELECT min(pool) FROM workspaces INDEXED BY workspaces_queue_pool
             WHERE state = 'queued' AND pool > p.pool)
     FROM p WHERE p.pool IS NOT NULL)
   SELECT pool FROM p WHERE pool IS NOT NULL;

-- name: board_queue
-- the head of one pool's queue that may start now, in claim order (an index range scan)
SELECT id, pool, model, agent, priority, label, parent, route, created_at, runs
   FROM workspaces INDEXED BY workspaces_queue_pool
   WHERE state = 'queued' AND pool = ? AND not_before <= ?
   ORDER BY priority, share_rank, created_at, seq LIMIT ?;

-- name: board_later
-- queued work that waits for a time (not_before) or for other work (held): soonest first
SELECT id, pool, model, agent, priority, label, parent, route, created_at, runs, not_before
   FROM workspaces INDEXED BY workspaces_not_before WHERE state = 'queued' AND not_before > ? ORDER BY not_before, seq LIMIT ?;

-- name: board_running
-- every active run with its workspace
SELECT r.id run, r.workspace, r.pool, r.host, r.attempt, r.phase, r.claimed_at, r.live,
   coalesce(r.agent_started_at, r.started_at) started_at, w.agent, w.model, w.label, w.path,
   w.parent, w.priority, w.stalled_at
   FROM runs r JOIN workspaces w ON w.id = r.workspace
   WHERE r.phase IN ('reserved', 'running') ORDER BY r.claimed_at, r.id;

-- name: board_ended
-- the latest ended workspaces
SELECT id, state, agent, pool, label, parent, started_at, ended_at, ended_reason, summary, runs,
   cost_usd, input_tokens, output_tokens, diff, (SELECT host FROM runs WHERE id = current_run) host
   FROM workspaces WHERE ended_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?;

-- name: board_timeline
-- the runs that ended since the window's start, then the active ones
SELECT * FROM (
   SELECT id, workspace, pool, host, attempt, coalesce(agent_started_at, started_at, claimed_at) started_at,
      ended_at, outcome FROM runs WHERE ended_at >= ? ORDER BY ended_at DESC LIMIT ?
) ended
UNION ALL
SELECT id, workspace, pool, host, attempt, coalesce(agent_started_at, started_at, claimed_at) started_at,
   ended_at, outcome FROM runs WHERE phase IN ('reserved', 'running');

-- name: workspace_events
-- one workspace's latest events, newest first
SELECT * FROM events WHERE workspace = ? ORDER BY id DESC LIMIT ?;
