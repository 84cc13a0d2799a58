"""How a workspace row reads in the actions' results (status of one workspace, wait)."""

import time
from pathlib import Path
from typing import Any

from ..model import Priority
from ..outputs import last_lines, read_tail
from ..policy import iso
from ..store import WorkspaceRow

TAIL_BYTES = 64 * 1024


def tail_lines(path: Path, n: int) -> str:
    return last_lines(read_tail(path, TAIL_BYTES), n)


def duration_s(row: WorkspaceRow) -> float | None:
    """The agent's wall time so far (or in all)."""
    if row.started_at is None:
        return None
    end = row.ended_at if row.ended_at is not None else time.time()
    return round(end - row.started_at, 3)


def wait_row(row: WorkspaceRow) -> dict[str, Any]:
    return {
        "workspace": row.id,
        "state": row.state,
        "exit_code": row.exit_code,
        "summary": row.summary,
        "duration_s": duration_s(row),
        "ended_reason": row.ended_reason,
        "session_id": row.session_id,
        "cost_usd": row.usage.cost_usd,
        "diff": _diff(row),
    }


def report(row: WorkspaceRow) -> dict[str, Any]:
    """What its runs reported: the agent session, turns, tokens, cost, what changed."""
    return {
        "session_id": row.session_id,
        "turns": row.usage.turns,
        "usage": {"input_tokens": row.usage.input_tokens, "output_tokens": row.usage.output_tokens},
        "cost_usd": row.usage.cost_usd,
        "diff": _diff(row),
        "commits": list(row.commits) if row.commits is not None else None,
    }


def _diff(row: WorkspaceRow) -> dict[str, Any] | None:
    return dict(row.diff) if row.diff is not None else None


def workspace_view(
    row: WorkspaceRow,
    *,
    pid: int | None,
    log_tail: str,
    host: str | None = None,
    children: list[dict[str, str]] | None = None,
    backoff_until: float | None = None,
) -> dict[str, Any]:
    """`pid` is on `host` (the host of its latest run; null before any run); `backoff_until`:
    when its pool may start it again (a queued workspace of a pool backing off)."""
    return {
        "workspace": row.id,
        "state": row.state,
        "agent": row.agent,
        "host": host,
        "pid": pid,
        "runs": row.runs,
        "priority": Priority(row.priority).label,
        "label": row.label,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at),
        "exit_code": row.exit_code,
        "reason": row.reason,
        "ended_reason": row.ended_reason,
        "summary": row.summary,
        "log_tail": log_tail,
        "path": row.path,
        "branch": row.branch,
        **report(row),
        "route": [e.agent for e in row.route] or None,  # its preference list, if it has one
        "routed": row.routed,  # the entry a routed claim took: {agent, skipped: {agent: why}}
        "preemptible": row.preemptible,
        "stalled": row.stalled_at is not None,
        "stalled_since": iso(row.stalled_at),
        "backoff_until": iso(backoff_until),
        "parent": row.parent,
        "depth": row.depth,
        "children": children or [],
        "group": row.group,
    }
