"""The queue side of the SQLite store: enqueue (with its ETA), queue positions and claims.

The lifecycle decides (plan_eta, open_lanes, best_head, plan_take); this side only counts and
probes the indexes it names and writes the plan, inside the claim's IMMEDIATE transaction.
"""

import sqlite3
import time
from collections.abc import Sequence
from functools import cached_property

from ... import policy
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
            eta = lifecycle.plan_eta(
                ws.pool,
                ws.model,
                read_pool_state(db, ws.pool),
                _QueueCounts(db, ws.pool, ws.model, ws.priority),
                limits=limits,
                now=now,
            )
            lifecycle.check_max_wait(eta, pool=ws.pool, max_wait_s=max_wait_s)
            db.execute(Q.insert_workspace, insert_args(ws, now))
            self._event(db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority)
            return EnqueueResult(read_workspace(db, ws.id), False, eta.position, eta.eta_s)

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


class _QueueCounts:
    """What an ETA may count (lifecycle.QueueCounts), each read from its index only when the
    lifecycle asks: an unlimited pool counts nothing, a free slot reads no runtimes."""

    def __init__(self, db: sqlite3.Connection, pool: str, model: str | None, priority: int) -> None:
        self._db, self._pool, self._model, self._priority = db, pool, model, priority

    def _count(self, sql: str, *args: object) -> int:
        return int(self._db.execute(sql, args).fetchone()[0])

    @cached_property
    def running_pool(self) -> int:
        return self._count(Q.running_in_pool, self._pool)

    @cached_property
    def running_lane(self) -> int:
        return self._count(Q.running_in_lane, self._pool, self._model)

    @cached_property
    def ahead_pool(self) -> int:
        return self._count(Q.queued_ahead_in_pool, self._pool, self._priority)

    @cached_property
    def ahead_lane(self) -> int:
        return self._count(Q.queued_ahead_in_lane, lane_of(self._pool, self._model), self._priority)

    @cached_property
    def runtimes(self) -> Sequence[float]:
        return _runtimes(self._db, self._pool, policy.ETA_WINDOW)


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
