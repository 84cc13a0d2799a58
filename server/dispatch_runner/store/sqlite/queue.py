"""The queue side of the SQLite store: enqueue (with its ETA), queue positions and claims.

The lifecycle decides a claim (open_lanes, best_head, plan_take); this side only probes the
indexes it names and writes the plan, inside the claim's IMMEDIATE transaction.
"""

import sqlite3
import time
from datetime import UTC, datetime

from ... import policy
from ...errors import QueueBusy
from ...model import WorkspaceState
from .. import lifecycle
from ..base import Claim, ClaimResult, EnqueueResult, Limits, NewWorkspace, WorkspaceRow
from .core import SQLiteCore
from .rows import (
    insert_args,
    lane_from,
    lane_of,
    read_frozen,
    read_pool_state,
    read_workspace,
    save_pool_state,
    workspace_row,
)
from .sql import Q


class QueueSide(SQLiteCore):
    # ---- enqueue ----------------------------------------------------------------------------

    def enqueue(
        self, ws: NewWorkspace, *, now: float, max_wait_s: float | None, limits: Limits
    ) -> EnqueueResult:
        def tx(db: sqlite3.Connection) -> EnqueueResult:
            if ws.idempotency_key:
                row = db.execute(Q.workspace_by_idempotency_key, (ws.idempotency_key,)).fetchone()
                if row is not None:
                    existing = workspace_row(row)
                    return EnqueueResult(existing, True, _position(db, existing), 0.0)
            position, eta, gate_wait = _estimate(db, ws.pool, ws.model, ws.priority, now, limits)
            if policy.exceeds_max_wait(
                eta_s=eta, position=position, gate_wait_s=gate_wait, max_wait_s=max_wait_s
            ):
                raise QueueBusy(ws.pool, eta, max_wait_s or 0.0, position)
            db.execute(Q.insert_workspace, insert_args(ws, now))
            self._event(db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority)
            return EnqueueResult(read_workspace(db, ws.id), False, position, eta)

        return self._write(tx)

    def recent_runtimes(self, pool: str, limit: int = policy.ETA_WINDOW) -> list[float]:
        return self._reading(lambda db: _runtimes(db, pool, limit))

    def queue_position(self, workspace_id: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute(Q.workspace, (workspace_id,)).fetchone()
            return _position(db, workspace_row(row)) if row else 0

        return self._reading(read)

    # ---- the gate ---------------------------------------------------------------------------

    def claim_next(self, *, now: float | None, limits: Limits, peer: str) -> ClaimResult:
        """`now=None` reads the clock inside the transaction, after the write lock is held, so
        claim times follow commit order across peers."""
        return self._write(lambda db: self._claim(db, time.time() if now is None else now, limits, peer))

    def _claim(self, db: sqlite3.Connection, now: float, limits: Limits, peer: str) -> ClaimResult:
        if read_frozen(db):
            return ClaimResult(None, None)
        best, wake = _pick(db, now, limits)
        later = db.execute(Q.next_not_before, (now,)).fetchone()[0]
        if later is not None:
            wake.append(float(later))
        wake_at = min(wake) if wake else None
        if best is None:
            return ClaimResult(None, wake_at)
        return ClaimResult(_take(db, best, now, limits, peer), wake_at)


def _estimate(
    db: sqlite3.Connection, pool: str, model: str | None, priority: int, now: float, limits: Limits
) -> tuple[int, float | None, float]:
    """(1-based position a new dispatch would take in its pool queue, estimated wait or None
    when unknown, the pool's time gate alone)."""
    state = read_pool_state(db, pool)
    gate = policy.pool_gate(limits.rates.get(pool), state, datetime.fromtimestamp(now, UTC))
    gate_wait = max((gate.wake_at.timestamp() - now) if gate.wake_at else 0.0, 0.0)
    limit = limits.concurrency.get(pool)
    total = limit.total_limit if limit else None
    if total is None and (limit is None or limit.model_limit(model) is None):
        return 0, gate_wait, gate_wait  # unlimited: only pacing or backoff can delay it
    model_cap = limit.model_limit(model) if limit else None
    if model_cap is not None and (total is None or model_cap < total):
        # the model's own limit is the tighter gate: count its lane only
        total = model_cap
        running = db.execute(Q.running_in_lane, (pool, model)).fetchone()[0]
        ahead = db.execute(Q.queued_ahead_in_lane, (lane_of(pool, model), priority)).fetchone()[0]
    else:
        running = db.execute(Q.running_in_pool, (pool,)).fetchone()[0]
        ahead = db.execute(Q.queued_ahead_in_pool, (pool, priority)).fetchone()[0]
    assert total is not None
    if running + ahead < total:
        return 0, gate_wait, gate_wait
    position = ahead + 1 - max(total - running, 0)
    runtimes = _runtimes(db, pool, policy.ETA_WINDOW)
    eta = policy.estimate_wait_s(position=position, limit=total, runtimes_s=runtimes, gate_wait_s=gate_wait)
    return position, eta, gate_wait


def _runtimes(db: sqlite3.Connection, pool: str, limit: int) -> list[float]:
    rows = db.execute(Q.recent_runtimes, (pool, limit)).fetchall()
    return [float(r[0]) for r in reversed(rows)]


def _position(db: sqlite3.Connection, ws: WorkspaceRow) -> int:
    if ws.state != WorkspaceState.QUEUED:
        return 0
    args = (ws.pool, ws.priority, ws.priority, ws.created_at, ws.created_at, ws.seq)
    return int(db.execute(Q.queue_position, args).fetchone()[0])


def _running_counts(db: sqlite3.Connection) -> tuple[dict[str, int], dict[tuple[str, str | None], int]]:
    """Running (and reserved) runs per pool and per (pool, model)."""
    pools: dict[str, int] = {}
    models: dict[tuple[str, str | None], int] = {}
    for r in db.execute(Q.running_by_lane):
        pools[r["pool"]] = pools.get(r["pool"], 0) + r["n"]
        models[(r["pool"], r["model"])] = r["n"]
    return pools, models


def _pick(db: sqlite3.Connection, now: float, limits: Limits) -> tuple[WorkspaceRow | None, list[float]]:
    """The best head among the lanes the lifecycle opens, one index probe per open lane; and the
    times at which a time-gated pool opens."""
    running_pool, running_model = _running_counts(db)
    lanes = [lane_from(r[0]) for r in db.execute(Q.queued_lanes).fetchall()]
    pools = {pool: read_pool_state(db, pool) for pool in {lane.pool for lane in lanes}}
    taken, wake = lifecycle.open_lanes(
        lanes, pools=pools, running_pool=running_pool, running_model=running_model, limits=limits, now=now
    )
    heads = [db.execute(Q.lane_head, (lane_of(lane.pool, lane.model), now)).fetchone() for lane in taken]
    return lifecycle.best_head(workspace_row(h) for h in heads if h is not None), wake


def _take(db: sqlite3.Connection, ws: WorkspaceRow, now: float, limits: Limits, peer: str) -> Claim:
    """Reserve the workspace's next run as the lifecycle plans it."""
    plan = lifecycle.plan_take(ws, read_pool_state(db, ws.pool), rate=limits.rates.get(ws.pool), now=now)
    cur = db.execute(
        Q.reserve_run,
        (ws.id, ws.pool, ws.runs + 1, peer, now, plan.spawn_mark, plan.prev_last_spawn, plan.counted_day),
    )
    run_id = int(cur.lastrowid or 0)
    db.execute(Q.claim_workspace, (run_id, now, ws.id))
    save_pool_state(db, ws.pool, plan.pool)
    return Claim(read_workspace(db, ws.id), run_id)
