"""The dashboard's view of a SQL store, read in one transaction: the queue in claim order with each
workspace's place and ETA (the same plan_eta a dispatch is told), work waiting for a time or for
other work, the active runs, the latest ended workspaces, and the runs of the timeline's window.

Every query is index-backed: the queue by workspaces_queue_pool (the head of each pool), the ended ones by
workspaces_ended, the timeline by runs_ended and runs_active, a workspace's events by
events_workspace.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ... import policy
from ...model import Priority
from .. import eta as etas
from ..base import Limits
from .conn import Conn, Row
from .queue import allowance_wait, pool_runtimes
from .rows import read_pool_state

QUEUE_PER_POOL = 50  # the dashboard shows the head of each pool's queue
LATER_SHOWN = 50
TIMELINE_RUNS = 2000  # ended runs in the window at most (the active ones always)


def board(db: Conn, *, now: float, since: float, limits: Limits, recent: int) -> dict[str, Any]:
    running = [_running(r) for r in db.execute(db.q.board_running)]
    return {
        "queue": _queue(db, now=now, limits=limits, running=running),
        "later": [_later(r) for r in db.execute(db.q.board_later, (now, LATER_SHOWN))],
        "running": running,
        "recent": [_ended(r) for r in db.execute(db.q.board_ended, (recent,))],
        "timeline": [
            {
                "run": r["id"],
                "workspace": r["workspace"],
                "pool": r["pool"],
                "host": r["host"],
                "attempt": r["attempt"],
                "started_at": r["started_at"],
                "ended_at": r["ended_at"],
                "outcome": r["outcome"],
            }
            for r in db.execute(db.q.board_timeline, (since, TIMELINE_RUNS))
        ],
    }


@dataclass(frozen=True, slots=True)
class _Counts:
    """etas.QueueCounts of one queued workspace, from what the board already read."""

    running_pool: int
    running_lane: int
    ahead_pool: int
    ahead_lane: int
    runtimes: Sequence[float]


def _queue(db: Conn, *, now: float, limits: Limits, running: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first QUEUE_PER_POOL of each pool's queue, with their places in the pool and in their
    model's lane (the lane's order is the pool's, so the head of the pool holds its lane's head)."""
    out = []
    for (pool,) in db.execute(db.q.board_queued_pools).fetchall():
        rows = db.execute(db.q.board_queue, (pool, now, QUEUE_PER_POOL)).fetchall()
        state, runtimes = read_pool_state(db, pool), pool_runtimes(db, pool, policy.ETA_WINDOW)
        lane_places: dict[str, int] = {}
        waits: dict[str | None, float] = {}  # each lane's allowance wait, read once
        in_pool = [x["model"] for x in running if x["pool"] == pool]
        for place, r in enumerate(rows, start=1):
            model = r["model"]
            lane_places[model or ""] = lane_places.get(model or "", 0) + 1
            counts = _Counts(
                running_pool=len(in_pool),
                running_lane=in_pool.count(model),
                ahead_pool=place - 1,
                ahead_lane=lane_places[model or ""] - 1,
                runtimes=runtimes,
            )
            if model not in waits:  # as a dispatch is told: after the allowance renews, if used up
                waits[model] = allowance_wait(db, pool, model, limits, now=now, max_wait_s=None)
            plan = etas.waiting(
                etas.plan_eta(pool, model, state, counts, limits=limits, now=now), waits[model]
            )
            eta = None if plan.eta_s is None else round(plan.eta_s, 1)
            out.append({**_queued(r), "position": place, "eta_s": eta})
    return out


def _queued(r: Row) -> dict[str, Any]:
    return {
        "workspace": r["id"],
        "pool": r["pool"],
        "agent": r["agent"],
        "priority": Priority(r["priority"]).label,
        "label": r["label"],
        "parent": r["parent"],
        "route": [e["agent"] for e in json.loads(r["route"])] if r["route"] else None,
        "created_at": r["created_at"],
        "attempts": r["runs"],
    }


def _later(r: Row) -> dict[str, Any]:
    held = r["not_before"] >= policy.HELD_UNTIL
    return {**_queued(r), "held": held, "not_before": None if held else r["not_before"]}


def _running(r: Row) -> dict[str, Any]:
    return {
        "run": r["run"],
        "workspace": r["workspace"],
        "pool": r["pool"],
        "model": r["model"],
        "agent": r["agent"],
        "host": r["host"],
        "attempt": r["attempt"],
        "phase": r["phase"],
        "started_at": r["started_at"] or r["claimed_at"],
        "label": r["label"],
        "parent": r["parent"],
        "priority": Priority(r["priority"]).label,
        "stalled": r["stalled_at"] is not None,
        "path": r["path"],
        "live": r["live"],
    }


def _ended(r: Row) -> dict[str, Any]:
    diff = json.loads(r["diff"]) if r["diff"] else None
    started, ended = r["started_at"], r["ended_at"]
    return {
        "workspace": r["id"],
        "state": r["state"],
        "agent": r["agent"],
        "pool": r["pool"],
        "label": r["label"],
        "parent": r["parent"],
        "host": r["host"],
        "ended_at": ended,
        "duration_s": None if started is None else round(ended - started, 3),
        "ended_reason": r["ended_reason"],
        "summary": (r["summary"] or "")[:200] or None,
        "attempts": r["runs"],
        "cost_usd": r["cost_usd"],
        "tokens": None if r["input_tokens"] is None else r["input_tokens"] + (r["output_tokens"] or 0),
        "diff": {k: diff.get(k) for k in ("files", "insertions", "deletions")} if diff else None,
    }


def workspace_events(db: Conn, workspace_id: str, limit: int) -> list[dict[str, Any]]:
    return [
        {"id": r["id"], "at": r["at"], "type": r["type"], "data": json.loads(r["data"])}
        for r in db.execute(db.q.workspace_events, (workspace_id, limit))
    ]
