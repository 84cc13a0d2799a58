"""The queue side of a SQL store: enqueue (with its ETA), queue positions and claims.

The lifecycle decides (plan_eta, open_lanes, best_head, plan_take); this side only counts and
probes the indexes it names and writes the plan, inside the claim's IMMEDIATE transaction.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property

from ... import allowance, policy
from ...model import WorkspaceState
from .. import lifecycle
from ..base import Claim, ClaimResult, EnqueueResult, HostCaps, Limits, NewWorkspace, WorkspaceRow
from .conn import Conn
from .core import Conflict, SQLCore
from .rows import (
    add_spend,
    agent_key,
    host_of,
    insert_args,
    lane_from,
    lane_of,
    read_frozen,
    read_pool_state,
    read_spent,
    read_workspace,
    requires_of,
    save_pool_state,
    workspace_row,
)


class QueueSide(SQLCore):
    # ---- enqueue ----------------------------------------------------------------------------

    def enqueue(
        self, ws: NewWorkspace, *, now: float, max_wait_s: float | None, limits: Limits
    ) -> EnqueueResult:
        def tx(db: Conn) -> EnqueueResult:
            if ws.idempotency_key:
                row = db.execute(db.q.workspace_by_idempotency_key, (ws.idempotency_key,)).fetchone()
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
            eta = _after_allowance(db, ws, eta, limits, now=now, max_wait_s=max_wait_s)
            db.execute(db.q.insert_workspace, insert_args(ws, now))
            extra = {"remote": True} if ws.remote else {}
            self._event(
                db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority, **extra
            )
            return EnqueueResult(read_workspace(db, ws.id), False, eta.position, eta.eta_s)

        return self._write(tx)

    def recent_runtimes(self, pool: str, limit: int = policy.ETA_WINDOW) -> list[float]:
        return self._reading(lambda db: _runtimes(db, pool, limit))

    def queue_position(self, workspace_id: str) -> int:
        def read(db: Conn) -> int:
            row = db.execute(db.q.workspace, (workspace_id,)).fetchone()
            return _position(db, workspace_row(row)) if row else 0

        return self._reading(read)

    # ---- the gate ---------------------------------------------------------------------------

    def claim_next(
        self, *, now: float | None, limits: Limits, peer: str, can: HostCaps | None = None
    ) -> ClaimResult:
        """`now=None` reads the clock inside the transaction, after the write lock is held, so
        claim times follow commit order across peers. `can`: what the peer's host can run (None:
        anything but workspaces that require labels)."""
        return self._write(lambda db: self._claim(db, time.time() if now is None else now, limits, peer, can))

    def _claim(self, db: Conn, now: float, limits: Limits, peer: str, can: HostCaps | None) -> ClaimResult:
        if read_frozen(db):
            return ClaimResult(None, None)
        pick = _Pick(db, now, host_of(peer), can)
        best, wake = pick(limits, lock=lambda pools: self._lock_pools(db, pools))
        for key, renews in pick.used_up:
            if db.execute(db.q.mark_allowance_exhausted, (f"allowance:{key}", str(renews))).rowcount:
                self._event(db, "AllowanceExhausted", now, None, None, key=key, until=renews)
        later = db.execute(db.q.next_not_before, (now,)).fetchone()[0]
        if later is not None:
            wake.append(float(later))
        wake_at = min(wake) if wake else None
        if best is None:
            return ClaimResult(None, wake_at)
        return ClaimResult(_take(db, best, now, limits, peer), wake_at)


def _after_allowance(
    db: Conn,
    ws: NewWorkspace,
    eta: lifecycle.EtaPlan,
    limits: Limits,
    *,
    now: float,
    max_wait_s: float | None,
) -> lifecycle.EtaPlan:
    """The ETA once the pool's or agent's allowance renews, if it is used up (refused past
    max_wait_s)."""
    keys = [k for k in allowance.allowance_keys(ws.pool, ws.model) if k in limits.allowance]
    if not keys:
        return eta
    spent = read_spent(db, keys, limits.rates, now)
    wait = allowance.check_wait(ws.pool, ws.model, limits, spent, now=now, max_wait_s=max_wait_s)
    if not wait:
        return eta
    return replace(eta, eta_s=max(eta.eta_s or 0.0, wait), gate_wait_s=max(eta.gate_wait_s, wait))


class _QueueCounts:
    """What an ETA may count (lifecycle.QueueCounts), each read from its index only when the
    lifecycle asks: an unlimited pool counts nothing, a free slot reads no runtimes."""

    def __init__(self, db: Conn, pool: str, model: str | None, priority: int) -> None:
        self._db, self._pool, self._model, self._priority = db, pool, model, priority

    def _count(self, sql: str, *args: object) -> int:
        return int(self._db.execute(sql, args).fetchone()[0])

    @cached_property
    def running_pool(self) -> int:
        return self._count(self._db.q.running_in_pool, self._pool)

    @cached_property
    def running_lane(self) -> int:
        return self._count(self._db.q.running_in_lane, self._pool, self._model)

    @cached_property
    def ahead_pool(self) -> int:
        return self._count(self._db.q.queued_ahead_in_pool, self._pool, self._priority)

    @cached_property
    def ahead_lane(self) -> int:
        return self._count(self._db.q.queued_ahead_in_lane, lane_of(self._pool, self._model), self._priority)

    @cached_property
    def runtimes(self) -> Sequence[float]:
        return _runtimes(self._db, self._pool, policy.ETA_WINDOW)


def _runtimes(db: Conn, pool: str, limit: int) -> list[float]:
    rows = db.execute(db.q.recent_runtimes, (pool, limit)).fetchall()
    return [float(r[0]) for r in reversed(rows)]


def _position(db: Conn, ws: WorkspaceRow) -> int:
    if ws.state != WorkspaceState.QUEUED:
        return 0
    args = (ws.pool, ws.priority, ws.priority, ws.created_at, ws.created_at, ws.seq)
    return int(db.execute(db.q.queue_position, args).fetchone()[0])


def _running_counts(db: Conn) -> tuple[dict[str, int], dict[tuple[str, str | None], int]]:
    """Running (and reserved) runs per pool and per (pool, model)."""
    pools: dict[str, int] = {}
    models: dict[tuple[str, str | None], int] = {}
    for r in db.execute(db.q.running_by_lane):
        pools[r["pool"]] = pools.get(r["pool"], 0) + r["n"]
        models[(r["pool"], r["model"])] = r["n"]
    return pools, models


class _Pick:
    """The best head among the lanes the lifecycle opens and this host can run, one index probe
    per open lane (a page of it, when the lane's first workspaces need another host or labels
    this one lacks); and the times at which a time-gated pool opens."""

    PAGE = 16

    def __init__(self, db: Conn, now: float, host: str, can: HostCaps | None) -> None:
        self.db, self.now, self.host, self.can = db, now, host, can
        self.used_up: list[tuple[str, float]] = []  # allowances found used up: (key, renews at)

    def __call__(
        self, limits: Limits, *, lock: Callable[[list[str]], None]
    ) -> tuple[WorkspaceRow | None, list[float]]:
        """The pools with queued work are locked (`lock`, in sorted order) before their runs are
        counted."""
        db = self.db
        lanes = [lane_from(r[0]) for r in db.execute(db.q.queued_lanes).fetchall()]
        lock(sorted({lane.pool for lane in lanes}))
        running_pool, running_model = _running_counts(db)
        pools = {pool: read_pool_state(db, pool) for pool in {lane.pool for lane in lanes}}
        budgeted = {
            key
            for lane in lanes
            for key in allowance.allowance_keys(lane.pool, lane.model)
            if key in limits.allowance
        }
        spent = read_spent(db, budgeted, limits.rates, self.now) if budgeted else None
        taken, wake = lifecycle.open_lanes(
            lanes,
            pools=pools,
            running_pool=running_pool,
            running_model=running_model,
            limits=limits,
            now=self.now,
            spent=spent,
        )
        if spent is not None:
            self.used_up = [
                u
                for lane in lanes
                if (u := allowance.used_up(lane.pool, lane.model, limits, spent, self.now))
            ]
        return lifecycle.best_head(h for lane in taken if (h := self._head(lane)) is not None), wake

    def _head(self, lane: lifecycle.Lane) -> WorkspaceRow | None:
        """The lane's first workspace this host may run. A host without labels asks SQL for the
        first that requires none; one with labels reads on page by page (keyed on the queue
        order: each row is read once) past those that require labels it lacks."""
        db, key = self.db, lane_of(lane.pool, lane.model)
        runs_pool = lifecycle.runs_pool(self.can, lane.pool)
        if runs_pool and (self.can is None or not self.can.labels):
            row = db.execute(db.q.lane_head_plain, (key, self.now, self.host)).fetchone()
            return workspace_row(row) if row is not None else None
        sql = db.q.lane_head if runs_pool else db.q.lane_head_pinned
        after: tuple[int, float, int] = (-1, 0.0, 0)
        while True:
            rows = db.execute(sql, (key, self.now, self.host, *after, self.PAGE)).fetchall()
            for row in rows:
                if lifecycle.fits_labels(requires_of(row), self.can):  # before decoding the whole row
                    return workspace_row(row)
            if len(rows) < self.PAGE:
                return None
            last = rows[-1]
            after = (last["priority"], last["created_at"], last["seq"])


def _take(db: Conn, ws: WorkspaceRow, now: float, limits: Limits, peer: str) -> Claim:
    """Reserve the workspace's next run as the lifecycle plans it."""
    plan = lifecycle.plan_take(ws, read_pool_state(db, ws.pool), rate=limits.rates.get(ws.pool), now=now)
    cur = db.execute(
        db.q.reserve_run,
        (
            ws.id,
            ws.pool,
            ws.runs + 1,
            peer,
            now,
            plan.spawn_mark,
            plan.prev_last_spawn,
            plan.counted_day,
            host_of(peer),
        ),
    )
    run_id = int(cur.fetchall()[0][0])  # stepped to its end: no statement left open
    if db.execute(db.q.claim_workspace, (run_id, now, ws.id)).rowcount != 1:
        raise Conflict(f"{ws.id} left the queue while it was claimed")  # a kill: claim again
    save_pool_state(db, ws.pool, plan.pool)
    add_spend(db, ws.pool, agent_key(ws), limits.rates.get(ws.pool), now, runs=1, tokens=0, usd=0.0)
    return Claim(read_workspace(db, ws.id), run_id)
