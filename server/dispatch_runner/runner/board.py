"""What the dashboard shows (runner.board) and its workspace page (runner.workspace_page).

The board is the overall status (pools, approvals, freeze) with the store's board (store/sql/
board.py: the queue with places and ETAs, later work, active runs, recent ends, the timeline's
runs) and, for each run on this host, what its output said so far: its last line, tokens and
dollars. Those come from following the run's log with the same Tracker its shim uses, from where
the last look stopped, so a look costs what the logs grew. A run on another host shows its host.
"""

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from .. import workspaces
from ..actions import StatusRequest
from ..launch import supervisor
from ..outputs import Tracker, follow
from .core import Core

TIMELINE_S = 3600.0  # the timeline's window
RECENT_ENDED = 30
PAGE_EVENTS = 200
FOLLOW_BYTES = 4 << 20  # read per look at most: a flood of output is caught up over a few looks


@dataclass
class _Followed:
    tracker: Tracker
    path: Path
    offset: int = 0


class Board:
    def __init__(self, core: Core, status: Any) -> None:
        self.core = core
        self.status = status  # Queries.status: the overall snapshot, as the status tool gives it
        self._followed: dict[int, _Followed] = {}
        self._following = threading.Lock()  # two reads at once (the feed, the JSON route) take turns

    async def board(self) -> dict[str, Any]:
        core = self.core
        now = time.time()
        snap = await self.status(StatusRequest(limit=1, log_lines=0))
        rows = await core.db(
            core.store.board, now=now, since=now - TIMELINE_S, limits=core.limits, recent=RECENT_ENDED
        )
        await anyio.to_thread.run_sync(self._follow_runs, rows["running"])
        peers = await core.db(core.store.peers)
        event_id = await core.db(core.store.last_event_id)
        snap.pop("workspaces", None)
        return {
            **snap,
            **rows,
            "now": now,
            "event_id": event_id,  # the store's latest event: what a page that shows one workspace watches
            "window_s": TIMELINE_S,
            "host": supervisor.host_id(),
            "hosts": sorted({p["host"] for p in peers if p.get("host")}),
        }

    def _follow_runs(self, running: list[dict[str, Any]]) -> None:
        """Each local run's output so far into its row; forget the runs no longer active."""
        with self._following:
            self._follow_locked(running)

    def _follow_locked(self, running: list[dict[str, Any]]) -> None:
        here = supervisor.host_id()
        active = set()
        for r in running:
            path, live = r.pop("path"), r.pop("live")
            if r["phase"] != "running":  # reserved: no agent yet, no output
                continue
            if r["host"] not in (here, None):
                r.update(_sent(live))  # what its shim sent with its last lease renewal
                continue
            active.add(r["run"])
            followed = self._followed.get(r["run"])
            if followed is None:
                agent = self.core.config.agents.get(r["pool"])
                out, _ = workspaces.run_log_paths(Path(path), r["attempt"])
                tracker = Tracker(agent.output if agent else "text")
                followed = self._followed[r["run"]] = _Followed(tracker, out)
            followed.offset = follow(followed.path, followed.tracker, followed.offset, limit=FOLLOW_BYTES)
            t = followed.tracker
            r["last_line"] = t.last_line
            r["cost_usd"] = t.cost_usd
            r["tokens"] = None if t.input_tokens is None else t.input_tokens + (t.output_tokens or 0)
        for run in set(self._followed) - active:
            self._followed.pop(run, None)

    async def workspace_page(self, workspace_id: str) -> dict[str, Any]:
        """One workspace as its status tells it (children, runs, diff, report) with its events."""
        view: dict[str, Any] = await self.status(StatusRequest(workspace=workspace_id, log_lines=0))
        if "members" in view:  # a fan-out group: its members are its children
            return {**view, "events": []}
        events = await self.core.db(self.core.store.workspace_events, workspace_id, PAGE_EVENTS)
        return {**view, "events": events}


class BoardActions:
    """The Runner's dashboard reads (mixed into it: runner/service.py)."""

    boards: Board

    async def board(self) -> dict[str, Any]:
        """What the dashboard shows: status with the queue's places and ETAs, the active runs
        with what they said so far, the latest ends and the last hour's runs."""
        return await self.boards.board()

    async def workspace_page(self, workspace_id: str) -> dict[str, Any]:
        """One workspace's status with its events (the dashboard's workspace page)."""
        return await self.boards.workspace_page(workspace_id)


def _sent(live: str | None) -> dict[str, Any]:
    """A run's progress as its shim last sent it (with the lease: every third of lease_s)."""
    progress = json.loads(live) if live else {}
    return {k: progress.get(k) for k in ("last_line", "tokens", "cost_usd")} | {
        "progress_at": progress.get("at")
    }
