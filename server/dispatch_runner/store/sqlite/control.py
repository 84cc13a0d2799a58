"""The control side of the SQLite store: freezing the queue, kills, peers and garbage collection."""

import sqlite3
from collections.abc import Sequence
from typing import Any

from ...model import WorkspaceState, check_transition
from ..base import KillPlan, RunRow, WorkspaceRow
from .core import SQLiteCore
from .rows import read_frozen, read_workspace, run_row, workspace_row
from .sql import MIGRATIONS, Q, marks

GC_CHUNK = 500  # ids per DELETE … IN (…), well under SQLite's bound-parameter limit


class ControlSide(SQLiteCore):
    def set_frozen(self, frozen: bool, *, now: float) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            was = read_frozen(db)
            db.execute(Q.set_frozen, ("1" if frozen else "0",))
            if was != frozen:
                self._event(db, "QueueFrozen" if frozen else "QueueUnfrozen", now)
            return frozen

        return self._write(tx)

    def plan_kill(
        self,
        *,
        workspaces: Sequence[str] = (),
        agent: str | None = None,
        everything: bool = False,
        now: float,
    ) -> KillPlan:
        """Cancel the queued targets; mark running ones kill_requested and return them to signal."""

        def tx(db: sqlite3.Connection) -> KillPlan:
            if everything:
                rows = db.execute(Q.kill_targets_all)
            elif agent is not None:
                rows = db.execute(Q.kill_targets_of_agent, (agent, agent, agent))
            else:
                sql = Q.expand("kill_targets_by_ids", ids=marks(len(workspaces)))
                rows = db.execute(sql, list(workspaces))
            cancelled: list[WorkspaceRow] = []
            signal: list[RunRow] = []
            for ws in [workspace_row(r) for r in rows]:
                if ws.state == WorkspaceState.QUEUED:
                    check_transition(WorkspaceState.QUEUED, WorkspaceState.CANCELLED)
                    db.execute(Q.cancel_workspace, (now, now, ws.id))
                    self._event(
                        db, "AgentCancelled", now, ws.id, ws.origin, agent=ws.agent, state="cancelled"
                    )
                    cancelled.append(read_workspace(db, ws.id))
                elif ws.current_run is not None:
                    db.execute(Q.request_kill, (ws.current_run,))
                    signal.append(run_row(db.execute(Q.run, (ws.current_run,)).fetchone()))
            return KillPlan(cancelled, signal)

        return self._write(tx)

    # ---- peers and housekeeping -------------------------------------------------------------

    def heartbeat_peer(self, peer: str, *, pid: int, start: int, boot_id: str, kind: str, now: float) -> None:
        self._write(
            lambda db: db.execute(Q.heartbeat_peer, (peer, pid, start, boot_id, kind, now, len(MIGRATIONS)))
        )

    def peers(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read(Q.peers)]

    def remove_peers(self, peers: Sequence[str]) -> int:
        if not peers:
            return 0
        sql = Q.expand("remove_peers", ids=marks(len(peers)))
        return self._write(lambda db: db.execute(sql, list(peers)).rowcount)

    def finished_before(
        self, before: float, *, after: tuple[float, str] | None = None, limit: int = 500
    ) -> list[WorkspaceRow]:
        """Finished workspaces that ended before `before`, oldest first, from past the
        (ended_at, id) cursor `after` (garbage collection pages through them)."""
        since, last = after if after is not None else (float("-inf"), "")
        return [workspace_row(r) for r in self._read(Q.finished_before, (before, since, since, last, limit))]

    def forget(self, workspaces: Sequence[str], *, events_before: float) -> int:
        """Delete these finished workspaces with their runs, and every event older than
        `events_before`. Their files are removed by the caller first."""

        def tx(db: sqlite3.Connection) -> int:
            gone = 0
            for chunk in range(0, len(workspaces), GC_CHUNK):
                part = list(workspaces[chunk : chunk + GC_CHUNK])
                ids = marks(len(part))
                db.execute(Q.expand("forget_runs", ids=ids), part)
                gone += db.execute(Q.expand("forget_workspaces", ids=ids), part).rowcount
            db.execute(Q.forget_events, (events_before,))
            return gone

        return self._write(tx)
