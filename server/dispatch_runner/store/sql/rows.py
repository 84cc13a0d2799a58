"""Rows to values and back for a SQL store, and the small reads every side shares."""

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ...allowance import Spent, spend_day
from ...policy import HELD_UNTIL, PoolState, RateConfig
from .. import lifecycle
from ..base import NewWorkspace, RouteEntry, RunRow, Usage, WorkspaceRow
from .conn import Conn, Row

LANE_SEP = "\x1f"


def lane_of(pool: str, model: str | None) -> str:
    """One gate lane (a pool and a model variant): the key of the workspaces_queue index."""
    return f"{pool}{LANE_SEP}{model or ''}"


def host_of(peer: str) -> str:
    """The host part of a peer id (`host:pid:start`): its runs belong to that host."""
    return peer.rsplit(":", 2)[0]


def requires_of(row: Row) -> tuple[str, ...]:
    """The labels a workspace row requires (its `requires` column: a JSON list, or NULL)."""
    return tuple(json.loads(row["requires"])) if row["requires"] else ()


def lane_from(lane: str) -> lifecycle.Lane:
    pool, _, model = lane.partition(LANE_SEP)
    return lifecycle.Lane(pool, model or None)


def insert_args(ws: NewWorkspace, now: float, *, share_rank: int = 0) -> tuple[Any, ...]:
    """The parameters of `insert_workspace`. A held workspace waits at HELD_UNTIL."""
    return (
        ws.id,
        ws.pool,
        ws.model,
        lane_of(ws.pool, ws.model),
        ws.agent,
        ws.task,
        ws.template,
        ws.priority,
        ws.label,
        ws.path,
        ws.run_dir,
        ws.cwd,
        ws.repo,
        ws.branch,
        ws.base_commit,
        ws.idempotency_key,
        ws.max_attempts,
        ws.timeout_s,
        HELD_UNTIL if ws.held else (ws.not_before or 0.0),
        now,
        now,
        ws.origin,
        ws.parent,
        json.dumps(ws.spec),
        ws.host,
        json.dumps(sorted(ws.requires)) if ws.requires else None,
        ws.dir_host,
        ws.depth,
        ws.root,
        ws.client,
        json.dumps([e.to_json() for e in ws.route]) if ws.route else None,
        ws.group,
        ws.held,
        ws.after_mode,
        ws.share_key,
        share_rank,
        ws.preemptible,
        ws.sandbox,
        ws.ask,
    )


def read_workspace(db: Conn, workspace_id: str) -> WorkspaceRow:
    """A workspace known to exist (the caller just wrote or found it)."""
    return workspace_row(db.execute(db.q.workspace, (workspace_id,)).fetchone())


def read_pool_state(db: Conn, pool: str) -> PoolState:
    row = db.execute(db.q.pool_state, (pool,)).fetchone()
    if row is None:
        return PoolState()
    return PoolState(
        backoff_until=row["backoff_until"],
        fail_count=row["fail_count"],
        last_spawn=row["last_spawn"],
        daily_count=row["daily_count"],
        daily_day=row["daily_day"],
        effective_limit=row["effective_limit"],
        clean_streak=row["clean_streak"],
    )


def save_pool_state(db: Conn, pool: str, s: PoolState) -> None:
    last = (s.last_spawn, s.daily_count, s.daily_day)
    db.execute(
        db.q.save_pool_state,
        (pool, s.backoff_until, s.fail_count, *last, s.effective_limit, s.clean_streak),
    )


def read_spent(
    db: Conn, keys: Iterable[str], rates: Mapping[str, RateConfig], now: float
) -> dict[str, Spent]:
    """Today's spend of pools and agents (`pool` or `pool:model` keys), each on its pool's day."""
    by_day: dict[str, list[str]] = {}
    for key in keys:
        by_day.setdefault(spend_day(rates.get(key.split(":", 1)[0]), now)[0], []).append(key)
    spent: dict[str, Spent] = {}
    for day, some in by_day.items():
        sql = db.q.expand("spend_of", keys=db.q.marks(len(some)))
        for r in db.execute(sql, (day, *some)).fetchall():
            spent[r["key"]] = Spent(runs=r["runs"], tokens=r["tokens"], usd=r["usd"])
    return spent


def agent_key(ws: WorkspaceRow) -> str | None:
    """The agent key a workspace's spend counts under, beside its pool's (None: the pool's own)."""
    return f"{ws.pool}:{ws.model}" if ws.model else None


def add_spend(
    db: Conn,
    pool: str,
    agent_key: str | None,
    rate: RateConfig | None,
    now: float,
    *,
    runs: int,
    tokens: int,
    usd: float,
) -> None:
    """Count spend on the pool's day, for the pool and (when it names a model) its agent."""
    day = spend_day(rate, now)[0]
    for key in {pool, agent_key or pool}:
        db.execute(db.q.add_spend, (key, day, runs, tokens, usd))


def read_frozen(db: Conn) -> bool:
    row = db.execute(db.q.frozen).fetchone()
    return row is not None and row[0] == "1"


def spawn_mark(run: Row) -> lifecycle.SpawnMark:
    return lifecycle.SpawnMark(
        reserved=run["phase"] == "reserved",
        spawn_mark=run["spawn_mark"],
        prev_last_spawn=run["prev_last_spawn"],
        counted_day=run["counted_day"],
        started_at=run["agent_started_at"] or run["started_at"],
        claimed_at=run["claimed_at"],
    )


def workspace_row(row: Row) -> WorkspaceRow:
    return WorkspaceRow(
        id=row["id"],
        seq=row["seq"],
        pool=row["pool"],
        model=row["model"],
        agent=row["agent"],
        task=row["task"],
        template=row["template"],
        priority=row["priority"],
        label=row["label"],
        state=row["state"],
        reason=row["reason"],
        path=row["path"],
        run_dir=row["run_dir"],
        cwd=row["cwd"],
        repo=row["repo"],
        branch=row["branch"],
        idempotency_key=row["idempotency_key"],
        base_commit=row["base_commit"],
        runs=row["runs"],
        attempts=row["attempts"],
        ended_reason=row["ended_reason"],
        rev=row["rev"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        exit_code=row["exit_code"],
        summary=row["summary"],
        session_id=row["session_id"],
        origin=row["origin"],
        parent=row["parent"],
        current_run=row["current_run"],
        pid=None,
        spec=json.loads(row["spec"]),
        host=row["host"],
        requires=requires_of(row),
        dir_host=row["dir_host"],
        **_reported(row),
    )


def _reported(row: Row) -> dict[str, Any]:
    """A workspace's report-back columns: usage, what changed, stalls, its tree, follow-ups."""
    return {
        "usage": Usage(
            turns=row["turns"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_usd=row["cost_usd"],
        ),
        "diff": json.loads(row["diff"]) if row["diff"] else None,
        "commits": json.loads(row["commits"]) if row["commits"] else None,
        "stalled_at": row["stalled_at"],
        "depth": row["depth"],
        "root": row["root"],
        "client": row["client"],
        **_scheduled(row),
        "next_input": row["next_input"],
    }


def run_row(row: Row) -> RunRow:
    return RunRow(
        id=row["id"],
        workspace=row["workspace"],
        pool=row["pool"],
        attempt=row["attempt"],
        phase=row["phase"],
        claimed_by=row["claimed_by"],
        claimed_at=row["claimed_at"],
        shim_pid=row["shim_pid"],
        shim_start=row["shim_start"],
        agent_pid=row["agent_pid"],
        agent_start=row["agent_start"],
        boot_id=row["boot_id"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        kill_requested=bool(row["kill_requested"]),
        host=row["host"],
        lease_until=row["lease_until"],
        outcome=row["outcome"],
    )


def route_of(text: str | None) -> tuple[RouteEntry, ...]:
    return (
        tuple(RouteEntry(e["agent"], e["pool"], e["model"], e["spec"]) for e in json.loads(text))
        if text
        else ()
    )


def _scheduled(row: Row) -> dict[str, Any]:
    """A workspace's routing and scheduling columns."""
    return {
        "route": route_of(row["route"]),
        "routed": json.loads(row["routed"]) if row["routed"] else None,
        "group": row["group_id"],
        "held": row["held"],
        "after_mode": row["after_mode"],
        "share_key": row["share_key"],
        "share_rank": row["share_rank"],
        "preemptible": bool(row["preemptible"]),
        "sandbox": row["sandbox"],
        "ask": row["ask"],
        "release_not_before": row["release_not_before"],
    }
