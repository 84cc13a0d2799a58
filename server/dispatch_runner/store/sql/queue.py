"""The queue side of a SQL store: enqueue (with its ETA), queue positions and claims.

The lifecycle decides (open_lanes, best_head, plan_take; etas.plan_eta); this side only counts and
probes the indexes it names and writes the plan, inside the claim's IMMEDIATE transaction.
"""

import json
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from ... import allowance, policy
from ...errors import DispatchError
from ...model import WorkspaceState
from .. import eta as etas
from .. import lifecycle
from ..base import Claim, ClaimResult, EnqueueResult, HostCaps, Limits, NewWorkspace, RouteEntry, WorkspaceRow
from . import deps
from .conn import Conn
from .core import Conflict, SQLCore
from .pick import Pick
from .rows import (
    add_spend,
    agent_key,
    host_of,
    insert_args,
    lane_of,
    read_frozen,
    read_pool_state,
    read_spent,
    read_workspace,
    save_pool_state,
    workspace_row,
)

PROMOTE_EVERY_S = 30.0  # how often a peer looks for work queued past promote_after_s


class QueueSide(SQLCore):
    _next_promotion: float = 0.0  # when this peer looks for work to promote again
    # ---- enqueue ----------------------------------------------------------------------------

    def enqueue(
        self, ws: NewWorkspace, *, now: float, max_wait_s: float | None, limits: Limits
    ) -> EnqueueResult:
        return self._write(lambda db: self._enqueue_in(db, ws, now=now, max_wait_s=max_wait_s, limits=limits))

    def _enqueue_in(
        self, db: Conn, ws: NewWorkspace, *, now: float, max_wait_s: float | None, limits: Limits
    ) -> EnqueueResult:
        """One workspace into the queue, inside the caller's transaction (a fan-out's members
        share one: store/sql/groups.py)."""
        if ws.idempotency_key:
            row = db.execute(db.q.workspace_by_idempotency_key, (ws.idempotency_key,)).fetchone()
            if row is not None:
                existing = workspace_row(row)
                return EnqueueResult(existing, True, _position(db, existing), 0.0)
        eta = _eta(db, ws, limits, now=now, max_wait_s=max_wait_s)
        db.execute(db.q.insert_workspace, insert_args(ws, now, share_rank=_share_rank(db, ws, limits)))
        extra = {"remote": True} if ws.remote else {}
        self._event(db, "AgentQueued", now, ws.id, ws.origin, agent=ws.agent, priority=ws.priority, **extra)
        deps.admit(self, db, ws, now)  # its needs, its group's cap: it may be released or cancelled
        return EnqueueResult(read_workspace(db, ws.id), False, eta.position, eta.eta_s)

    def recent_runtimes(self, pool: str, limit: int = policy.ETA_WINDOW) -> list[float]:
        return self._reading(lambda db: pool_runtimes(db, pool, limit))

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
        self._promote(time.time() if now is None else now, limits.promote_after_s)
        return self._write(lambda db: self._claim(db, time.time() if now is None else now, limits, peer, can))

    def _promote(self, now: float, after_s: float | None) -> None:
        """Work queued longer than `after_s` moves up a level (AgentPromoted). A scan of the queue,
        so at most every PROMOTE_EVERY_S per peer; a transaction of its own, taking no pool lock
        (inside the claim's it would take rows and the event lock before the pools')."""
        if not after_s or now < self._next_promotion:
            return
        self._next_promotion = now + min(PROMOTE_EVERY_S, after_s / 10)

        def tx(db: Conn) -> None:
            for row in db.execute(db.q.promote_queued, (now, now - after_s)).fetchall():
                self._event(db, "AgentPromoted", now, row["id"], row["origin"], priority=row["priority"])

        self._write(tx)

    def _claim(self, db: Conn, now: float, limits: Limits, peer: str, can: HostCaps | None) -> ClaimResult:
        if read_frozen(db):
            return ClaimResult(None, None)
        pick = Pick(db, now, host_of(peer), can)
        best, wake = pick(limits, lock=lambda pools: self._lock_pools(db, pools))
        # a critical head this claim takes needs no victim (routed to a free entry, say)
        preempt = pick.preemption(limits) if best is None or best.priority > 0 else None
        for key, renews in pick.used_up:
            if db.execute(db.q.mark_allowance_exhausted, (f"allowance:{key}", str(renews))).rowcount:
                self._event(db, "AllowanceExhausted", now, None, None, key=key, until=renews)
        later = db.execute(db.q.next_not_before, (now,)).fetchone()[0]
        if later is not None:
            wake.append(float(later))
        wake_at = min(wake) if wake else None
        if best is None:
            return ClaimResult(None, wake_at, preempt=preempt)
        if pick.entry is not None:
            routed = _route(db, best, pick.entry, pick.why)
            if routed is not None:
                self._event(db, "AgentRouted", now, best.id, best.origin, **routed)
            best = read_workspace(db, best.id)
        return ClaimResult(_take(db, best, now, limits, peer), wake_at, preempt=preempt)


def _share_rank(db: Conn, ws: NewWorkspace, limits: Limits) -> int:
    """Fair share (start-time fair queueing): a sender's next task takes the round after its last
    one queued or running at this priority of the pool, and never one the level has already
    passed — so one sender's burst of 50 interleaves with another's single task instead of
    starving it."""
    if not limits.fair_share or ws.share_key is None:
        return 0
    level = (ws.pool, ws.priority)
    floors = [r[0] for r in db.execute(db.q.share_floor, (*level, *level)) if r[0] is not None]
    lasts = [
        r[0]
        for r in db.execute(db.q.share_last, (*level, ws.share_key, *level, ws.share_key))
        if r[0] is not None
    ]
    return max(int(min(floors, default=0)), int(max(lasts)) + 1 if lasts else 0)


def _route(db: Conn, ws: WorkspaceRow, entry: RouteEntry, why: Mapping[str, str]) -> dict[str, Any] | None:
    """A routed claim takes `entry`: the workspace moves to its pool and agent, and records why
    the entries before it were passed over (AgentRouted's data, when it moved or skipped any)."""
    skipped = {
        e.agent: why.get(f"{e.pool}:{e.model or ''}", "no room") for e in ws.route[: ws.route.index(entry)]
    }
    routed = {"agent": entry.agent, "skipped": skipped}
    args = (entry.pool, entry.model, lane_of(entry.pool, entry.model), entry.agent, json.dumps(entry.spec))
    if db.execute(db.q.route_take, (*args, json.dumps(routed), ws.id)).rowcount != 1:
        raise Conflict(f"{ws.id} left the queue while it was routed")  # another peer took it: again
    if entry.agent != ws.agent or skipped:
        return {"agent": entry.agent, "from": ws.agent, "skipped": skipped}
    return None


def _eta(db: Conn, ws: NewWorkspace, limits: Limits, *, now: float, max_wait_s: float | None) -> etas.EtaPlan:
    """Where a dispatch waits and for how long — with a preference list, on the entry that would
    start it soonest — refused (QueueBusy, LimitRefused) past its max_wait_s."""
    lanes = [(e.pool, e.model) for e in ws.route] or [(ws.pool, ws.model)]
    best: tuple[float, etas.EtaPlan] | None = None
    refusal: Exception | None = None
    for pool, model in lanes:
        eta = etas.plan_eta(
            pool,
            model,
            read_pool_state(db, pool),
            _QueueCounts(db, pool, model, ws.priority, now),
            limits=limits,
            now=now,
        )
        try:
            etas.check_max_wait(eta, pool=pool, max_wait_s=max_wait_s)
            eta = after_allowance(db, pool, model, eta, limits, now=now, max_wait_s=max_wait_s)
        except DispatchError as exc:
            refusal = refusal or exc  # the first entry's reason, if none can start in time
            continue
        key = eta.eta_s if eta.eta_s is not None else float("inf")
        if best is None or key < best[0]:
            best = (key, eta)
    if best is None:
        assert refusal is not None
        raise refusal
    return best[1]


def after_allowance(
    db: Conn,
    pool: str,
    model: str | None,
    eta: etas.EtaPlan,
    limits: Limits,
    *,
    now: float,
    max_wait_s: float | None,
) -> etas.EtaPlan:
    """The ETA once the pool's or agent's allowance renews, if it is used up (refused past
    max_wait_s)."""
    return etas.waiting(eta, allowance_wait(db, pool, model, limits, now=now, max_wait_s=max_wait_s))


def allowance_wait(
    db: Conn, pool: str, model: str | None, limits: Limits, *, now: float, max_wait_s: float | None
) -> float:
    """Seconds until the pool's or agent's allowance renews, if it is used up (0: it is not;
    refused past max_wait_s)."""
    keys = [k for k in allowance.allowance_keys(pool, model) if k in limits.allowance]
    if not keys:
        return 0.0
    spent = read_spent(db, keys, limits.rates, now)
    return allowance.check_wait(pool, model, limits, spent, now=now, max_wait_s=max_wait_s) or 0.0


class _QueueCounts:
    """What an ETA may count (etas.QueueCounts), each read from its index only when the
    lifecycle asks: an unlimited pool counts nothing, a free slot reads no runtimes."""

    def __init__(self, db: Conn, pool: str, model: str | None, priority: int, now: float) -> None:
        self._db, self._pool, self._model, self._priority, self._now = db, pool, model, priority, now

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
        return self._count(self._db.q.queued_ahead_in_pool, self._pool, self._priority, self._now)

    @cached_property
    def ahead_lane(self) -> int:
        return self._count(
            self._db.q.queued_ahead_in_lane, lane_of(self._pool, self._model), self._priority, self._now
        )

    @cached_property
    def runtimes(self) -> Sequence[float]:
        return pool_runtimes(self._db, self._pool, policy.ETA_WINDOW)


def pool_runtimes(db: Conn, pool: str, limit: int) -> list[float]:
    rows = db.execute(db.q.recent_runtimes, (pool, limit)).fetchall()
    return [float(r[0]) for r in reversed(rows)]


def _position(db: Conn, ws: WorkspaceRow) -> int:
    if ws.state != WorkspaceState.QUEUED:
        return 0
    args = (ws.pool, ws.priority, ws.share_rank, ws.created_at, ws.seq)
    return int(db.execute(db.q.queue_position, args).fetchone()[0])


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
