"""The overall `status` snapshot of a SQL store: pools, counts and recent workspaces.

Every query here is index-backed (workspaces_state_cover, runs_pool_ended, workspaces_created),
so status stays fast with tens of thousands of workspaces.
"""

from datetime import UTC, datetime
from typing import Any

from ... import policy
from ...allowance import Allowance, Spent, exhausted
from ...model import Priority
from .. import lanes
from ..base import Limits, WorkspaceRow
from .approvals import pending_rows
from .conn import Conn, Row
from .rows import read_pool_state, read_spent, workspace_row


def snapshot(
    db: Conn,
    *,
    now: float,
    limits: Limits,
    agent: str | None,
    state: str | None,
    limit: int,
    frozen: bool,
) -> dict[str, Any]:
    counts = {r[0]: r[1] for r in db.execute(db.q.count_by_state)}
    pools = _pool_counts(db, limits)
    _pool_times(db, pools, now=now, limits=limits)
    _pool_spend(db, pools, now=now, limits=limits)
    return {
        "frozen": frozen,
        "pools": dict(sorted(pools.items())),
        "allowance": _agent_allowance(db, now=now, limits=limits),
        "counts": counts,
        "undelivered": int(db.execute(db.q.outbox_undelivered).fetchone()[0]),
        "approvals": pending_rows(db, now),  # permission requests waiting for an answer
        "workspaces": [
            _short(workspace_row(r), now, r["run_host"]) for r in _recent(db, agent, state, limit)
        ],
    }


def _pool_counts(db: Conn, limits: Limits) -> dict[str, dict[str, Any]]:
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
    for r in db.execute(db.q.pool_counts):
        e = entry(r["pool"])
        e[r["state"]] += r["n"]
        if r["state"] == "queued":
            e["_oldest"] = min(filter(None, (e["_oldest"], r["oldest"])))
        elif r["model"] is not None:
            e["models"].setdefault(r["model"], {"running": 0, "limit": None})["running"] += r["n"]
    for r in db.execute(db.q.known_pools):
        if ":" not in r[0]:  # pool:model rows hold a model's adaptive limit, not a pool
            entry(r[0])
    return pools


def _pool_times(db: Conn, pools: dict[str, dict[str, Any]], *, now: float, limits: Limits) -> None:
    thr = {r[0]: r[1] for r in db.execute(db.q.finished_since, (now - 60,))}
    nowdt = datetime.fromtimestamp(now, UTC)
    for name, e in pools.items():
        ps = read_pool_state(db, name)
        rate = limits.rates.get(name)
        gate = policy.pool_gate(rate, ps, nowdt)
        backing_off = ps.backoff_until is not None and ps.backoff_until > now
        e["backoff_until"] = policy.iso(ps.backoff_until) if backing_off else None
        e["daily_used"] = policy.daily_used(rate or policy.DEFAULT_RATE, ps, nowdt)
        e["daily_limit"] = rate.daily_limit if rate else None
        e["next_spawn_at"] = policy.iso(gate.wake_at.timestamp()) if gate.wake_at else None
        e["oldest_queued_at"] = policy.iso(e.pop("_oldest"))
        e["throughput_1m"] = thr.get(name, 0)
        limit = lanes.limit_of(name, limits, ps)  # an adaptive pool's current limit
        e["effective_limit"] = limit.total_limit if limit else None
        e["adaptive"] = name in limits.adaptive
        for model, m in e["models"].items():  # a model's own adaptive limit, where it has one
            if f"{name}:{model}" in limits.adaptive:
                mine = lanes.limit_of(
                    name, limits, ps, model=model, model_state=read_pool_state(db, f"{name}:{model}")
                )
                m["effective_limit"] = mine.model_limit(model) if mine else None


def _pool_spend(db: Conn, pools: dict[str, dict[str, Any]], *, now: float, limits: Limits) -> None:
    """Each pool's use today (runs, tokens, dollars) and, where it has one, against its
    allowance: {runs, tokens, usd: {used, limit}}."""
    spent = read_spent(db, pools, limits.rates, now)
    for name, e in pools.items():
        used = spent.get(name, Spent())
        e["usage_today"] = {"runs": used.runs, "tokens": used.tokens, "usd": round(used.usd, 4)}
        e["allowance"] = _against(limits.allowance.get(name), used)


def _agent_allowance(db: Conn, *, now: float, limits: Limits) -> dict[str, Any]:
    """Allowances set on an agent (pool:model), with today's use."""
    keys = [k for k in limits.allowance if ":" in k]
    spent = read_spent(db, keys, limits.rates, now) if keys else {}
    return {k: _against(limits.allowance[k], spent.get(k, Spent())) for k in sorted(keys)}


def _against(allowance: Allowance | None, used: Spent) -> dict[str, Any] | None:
    if allowance is None:
        return None
    out: dict[str, Any] = {
        m: {"used": round(getattr(used, m), 4), "limit": getattr(allowance, m)}
        for m in ("runs", "tokens", "usd")
        if getattr(allowance, m) is not None
    }
    out["exhausted"] = exhausted(allowance, used)
    return out


def _recent(db: Conn, agent: str | None, state: str | None, limit: int) -> list[Row]:
    """At most `limit` rows: running first, then newest."""
    filters: list[str] = []
    args: list[object] = []
    if agent:
        filters.append(db.q.filter_agent)
        args += [agent, agent]
    if state:
        filters.append(db.q.filter_state)
        args.append(state)
    rows = db.execute(db.q.expand("recent_running", filters=" ".join(filters)), [*args, limit]).fetchall()
    if len(rows) < limit:
        sql = db.q.expand("recent_not_running", filters=" ".join(filters))
        rows += db.execute(sql, [*args, limit - len(rows)]).fetchall()
    return rows


def _short(ws: WorkspaceRow, now: float, run_host: str | None) -> dict[str, Any]:
    """`host`: where its latest run ran, else where it must run (null: any host, not run yet)."""
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
        "host": run_host or ws.host,
        "cost_usd": ws.usage.cost_usd,
        "stalled": ws.stalled_at is not None,
        "parent": ws.parent,
    }
