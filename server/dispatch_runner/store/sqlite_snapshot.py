"""The overall `status` snapshot of the SQLite store: pools, counts and recent workspaces.

Every query here is index-backed (workspaces_state_cover, runs_pool_ended, workspaces_created),
so status stays fast with tens of thousands of workspaces.
"""

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import policy
from ..model import Priority
from ..policy import PoolState
from .base import Limits, WorkspaceRow

PoolStateReader = Callable[[sqlite3.Connection, str], PoolState]


def snapshot(
    db: sqlite3.Connection,
    *,
    now: float,
    limits: Limits,
    agent: str | None,
    state: str | None,
    limit: int,
    pool_state: PoolStateReader,
    frozen: bool,
    to_row: Callable[[sqlite3.Row], WorkspaceRow],
) -> dict[str, Any]:
    counts = {r[0]: r[1] for r in db.execute("SELECT state, count(*) FROM workspaces GROUP BY state")}
    pools = _pool_counts(db, limits)
    _pool_times(db, pools, now=now, limits=limits, pool_state=pool_state)
    return {
        "frozen": frozen,
        "pools": dict(sorted(pools.items())),
        "counts": counts,
        "workspaces": [_short(to_row(r), now) for r in _recent(db, agent, state, limit)],
    }


def _pool_counts(db: sqlite3.Connection, limits: Limits) -> dict[str, dict[str, Any]]:
    pools: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        if name not in pools:
            lim = limits.concurrency.get(name)
            pools[name] = {
                "running": 0,
                "queued": 0,
                "limit": lim.total_limit if lim else None,
                "models": {
                    m: {"running": 0, "limit": n if n > 0 else None}
                    for m, n in (lim.models.items() if lim else ())
                },
                "_oldest": None,
            }
        return pools[name]

    for name in limits.concurrency:
        entry(name)
    for r in db.execute(
        "SELECT pool, model, state, count(*) n, min(created_at) oldest FROM "
        "workspaces WHERE state IN ('queued', 'running') GROUP BY pool, model, state"
    ):
        e = entry(r["pool"])
        e[r["state"]] += r["n"]
        if r["state"] == "queued":
            e["_oldest"] = min(filter(None, (e["_oldest"], r["oldest"])))
        elif r["model"] is not None:
            e["models"].setdefault(r["model"], {"running": 0, "limit": None})["running"] += r["n"]
    for r in db.execute("SELECT pool FROM pool_state"):
        entry(r[0])
    return pools


def _pool_times(
    db: sqlite3.Connection,
    pools: dict[str, dict[str, Any]],
    *,
    now: float,
    limits: Limits,
    pool_state: PoolStateReader,
) -> None:
    thr = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT pool, count(*) FROM runs WHERE ended_at >= ? AND ended_at IS NOT NULL GROUP BY pool",
            (now - 60,),
        )
    }
    nowdt = datetime.fromtimestamp(now, UTC)
    for name, e in pools.items():
        ps = pool_state(db, name)
        rate = limits.rates.get(name)
        gate = policy.pool_gate(rate, ps, nowdt)
        backing_off = ps.backoff_until is not None and ps.backoff_until > now
        e["backoff_until"] = policy.iso(ps.backoff_until) if backing_off else None
        e["daily_used"] = policy.daily_used(rate or policy.DEFAULT_RATE, ps, nowdt)
        e["daily_limit"] = rate.daily_limit if rate else None
        e["next_spawn_at"] = policy.iso(gate.wake_at.timestamp()) if gate.wake_at else None
        e["oldest_queued_at"] = policy.iso(e.pop("_oldest"))
        e["throughput_1m"] = thr.get(name, 0)


def _recent(db: sqlite3.Connection, agent: str | None, state: str | None, limit: int) -> list[sqlite3.Row]:
    """At most `limit` rows: running first, then newest."""
    filters, args = [], []
    if agent:
        filters.append("(agent = ? OR pool = ?)")
        args += [agent, agent]
    if state:
        filters.append("state = ?")
        args.append(state)
    where = " AND ".join(filters) if filters else "1"
    rows = db.execute(
        f"SELECT * FROM workspaces WHERE state = 'running' AND {where} ORDER BY created_at DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
    if len(rows) < limit:
        rows += db.execute(
            f"SELECT * FROM workspaces WHERE state != 'running' AND {where} ORDER BY created_at DESC LIMIT ?",
            [*args, limit - len(rows)],
        ).fetchall()
    return rows


def _short(ws: WorkspaceRow, now: float) -> dict[str, Any]:
    end = ws.ended_at if ws.ended_at is not None else (now if ws.state == "running" else None)
    duration = None if ws.started_at is None or end is None else round(end - ws.started_at, 3)
    return {
        "workspace": ws.id,
        "state": ws.state,
        "agent": ws.agent,
        "priority": Priority(ws.priority).label,
        "label": ws.label,
        "created_at": policy.iso(ws.created_at),
        "duration_s": duration,
        "summary": (ws.summary or "")[:200] or None,
    }
